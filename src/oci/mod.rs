//! Pure OCI distribution types: no I/O, nothing of ours imported.

mod digest;
mod error;
mod manifest;
mod media;
mod path;
mod platform;
mod read;
mod reference;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{ErrorBody, ErrorCode, ErrorEntry};
pub use manifest::{Descriptor, ManifestDoc, References};
pub use media::{
    DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, OCI_INDEX, OCI_MANIFEST,
    accepts, is_docker_schema1, is_media_type,
};
pub use path::{Endpoint, OciPath, PathError};
pub use platform::{Platform, PlatformError};
pub use read::{ByteRange, Want};
pub use reference::{NameError, Reference, Repository, Tag, is_registry_name};
