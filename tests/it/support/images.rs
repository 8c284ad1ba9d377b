//! Deterministic OCI / Docker schema2 images built in memory.
//!
//! Layers are real gzip'd tars (stored deflate blocks, no compressor needed) so containerd can
//! unpack them; configs carry the matching `diff_ids`. Same seed → same bytes → same digests.

use std::path::Path;

use bytes::Bytes;
use rand::{RngCore, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub mod media {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// Manifest media types a registry serves from `/manifests/`.
    pub fn is_manifest(media_type: &str) -> bool {
        [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&media_type)
    }
}

/// Any content-addressed object: its bytes, `sha256:<hex>` digest and media type.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The hex part of the digest (the file name under `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    /// An OCI descriptor pointing at this blob.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(architecture: &str) -> Platform {
        let variant = (architecture == "arm64").then(|| "v8".to_string());
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant,
        }
    }

    /// `linux/amd64` style, as `ctr --platform` takes it.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.os, self.architecture)
    }

    fn json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

/// What an image or index is made of, so a registry or a layout can store it.
pub trait Content {
    /// The object a tag points at (manifest or index).
    fn root(&self) -> &Blob;
    /// Every manifest, root included.
    fn manifests(&self) -> Vec<&Blob>;
    /// Every non-manifest blob (configs and layers).
    fn blobs(&self) -> Vec<&Blob>;
}

/// A single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub platform: Platform,
}

impl Content for Image {
    fn root(&self) -> &Blob {
        &self.manifest
    }
    fn manifests(&self) -> Vec<&Blob> {
        vec![&self.manifest]
    }
    fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }
}

/// A multi-platform index (OCI) or manifest list (Docker).
#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub index: Blob,
    pub images: Vec<Image>,
}

impl ImageIndex {
    pub fn image_for(&self, architecture: &str) -> &Image {
        self.images
            .iter()
            .find(|i| i.platform.architecture == architecture)
            .expect("platform in index")
    }
}

impl Content for ImageIndex {
    fn root(&self) -> &Blob {
        &self.index
    }
    fn manifests(&self) -> Vec<&Blob> {
        std::iter::once(&self.index)
            .chain(self.images.iter().map(|i| &i.manifest))
            .collect()
    }
    fn blobs(&self) -> Vec<&Blob> {
        self.images.iter().flat_map(|i| i.blobs()).collect()
    }
}

/// Inputs of one generated image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub seed: u64,
    pub format: Format,
    pub platform: Platform,
    pub layers: usize,
    /// Bytes of random file content per layer (the gzip is slightly larger).
    pub layer_size: usize,
}

impl ImageSpec {
    pub fn new(seed: u64, format: Format) -> ImageSpec {
        ImageSpec {
            seed,
            format,
            platform: Platform::linux("amd64"),
            layers: 2,
            layer_size: 64 * 1024,
        }
    }
}

/// A single-platform image with `spec.layers` tar+gzip layers.
pub fn image(spec: &ImageSpec) -> Image {
    let layer_type = match spec.format {
        Format::Oci => media::OCI_LAYER_GZIP,
        Format::Docker => media::DOCKER_LAYER,
    };
    let mut diff_ids = Vec::new();
    let mut layers = Vec::new();
    for i in 0..spec.layers {
        let seed = spec.seed.wrapping_mul(1000).wrapping_add(i as u64);
        let name = format!(
            "berth-fixture/{}/{}/layer-{i}.bin",
            spec.seed, spec.platform.architecture
        );
        let tar = tar_one_file(&name, &random_bytes(seed, spec.layer_size));
        diff_ids.push(sha256_digest(&tar));
        layers.push(Blob::new(layer_type, gzip_stored(&tar)));
    }
    image_from_parts(spec, layers, diff_ids)
}

/// An image whose layers are given (e.g. one [`big_blob`]); `diff_ids` are then fake, so
/// containerd can fetch but not unpack it.
pub fn image_with_layers(spec: &ImageSpec, layers: Vec<Blob>) -> Image {
    let diff_ids = layers.iter().map(|l| l.digest.clone()).collect();
    image_from_parts(spec, layers, diff_ids)
}

fn image_from_parts(spec: &ImageSpec, layers: Vec<Blob>, diff_ids: Vec<String>) -> Image {
    let (manifest_type, config_type) = match spec.format {
        Format::Oci => (media::OCI_MANIFEST, media::OCI_CONFIG),
        Format::Docker => (media::DOCKER_MANIFEST, media::DOCKER_CONFIG),
    };
    let mut config = spec.platform.json();
    config["created"] = json!("2024-01-01T00:00:00Z");
    config["config"] = json!({"Cmd": ["/bin/sh"], "Env": [format!("BERTH_SEED={}", spec.seed)]});
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let config = Blob::new(config_type, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(manifest_type, serde_json::to_vec(&manifest).unwrap());
    Image {
        manifest,
        config,
        layers,
        platform: spec.platform.clone(),
    }
}

/// linux/amd64 + linux/arm64 images under one index (OCI) or manifest list (Docker).
pub fn multi_arch(seed: u64, format: Format) -> ImageIndex {
    let images: Vec<Image> = ["amd64", "arm64"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            let mut spec = ImageSpec::new(seed.wrapping_mul(10).wrapping_add(i as u64), format);
            spec.platform = Platform::linux(arch);
            image(&spec)
        })
        .collect();
    let index_type = match format {
        Format::Oci => media::OCI_INDEX,
        Format::Docker => media::DOCKER_LIST,
    };
    let manifests: Vec<Value> = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.descriptor();
            d["platform"] = i.platform.json();
            d
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests});
    ImageIndex {
        index: Blob::new(index_type, serde_json::to_vec(&index).unwrap()),
        images,
    }
}

/// An OCI artifact manifest whose `subject` is `subject` (a signature/SBOM stand-in), for referrers.
pub fn referrer(subject: &Blob, artifact_type: &str, seed: u64) -> (Blob, Blob) {
    let payload = Blob::new("application/octet-stream", random_bytes(seed, 256));
    let empty = Blob::new(media::OCI_EMPTY, &b"{}"[..]);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [payload.descriptor()],
        "subject": subject.descriptor(),
    });
    (
        Blob::new(media::OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap()),
        payload,
    )
}

/// One large blob of `mib` MiB, cheap to build (a random MiB repeated, each copy stamped with
/// its index so no two MiB are equal). Media type: uncompressed OCI layer.
pub fn big_blob(mib: usize, seed: u64) -> Blob {
    const MIB: usize = 1024 * 1024;
    let unit = random_bytes(seed, MIB);
    let mut out = Vec::with_capacity(mib * MIB);
    for i in 0..mib {
        out.extend_from_slice(&unit);
        let stamp = (i as u64).to_le_bytes();
        out[i * MIB..i * MIB + 8].copy_from_slice(&stamp);
    }
    Blob::new(media::OCI_LAYER_TAR, out)
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) holding `tagged`
/// content, each root tagged via `org.opencontainers.image.ref.name` (what `oci:<dir>:<tag>` reads).
/// For skopeo, roots must be OCI media types (see [`write_dir_layout`] for Docker ones).
pub fn write_oci_layout(dir: &Path, tagged: &[(&str, &dyn Content)]) -> std::io::Result<()> {
    let blobs_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut roots = Vec::new();
    for (tag, content) in tagged {
        for blob in content.manifests().into_iter().chain(content.blobs()) {
            std::fs::write(blobs_dir.join(blob.hex()), &blob.bytes)?;
        }
        let mut d = content.root().descriptor();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        roots.push(d);
    }
    let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": roots});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
}

/// Writes `content` in skopeo's `dir:` transport format (version 1.1): `manifest.json` (the
/// root), `<hex>.manifest.json` per instance of a list, blobs as `<hex>`. skopeo 1.9's `oci:`
/// transport only finds OCI media types in `index.json`, so Docker schema2 images go this way.
pub fn write_dir_layout(dir: &Path, content: &dyn Content) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n")?;
    std::fs::write(dir.join("manifest.json"), &content.root().bytes)?;
    for m in content.manifests().into_iter().skip(1) {
        std::fs::write(dir.join(format!("{}.manifest.json", m.hex())), &m.bytes)?;
    }
    for b in content.blobs() {
        std::fs::write(dir.join(b.hex()), &b.bytes)?;
    }
    Ok(())
}

/// Whether skopeo's `oci:` transport can carry `content` (OCI media types only).
pub fn is_oci(content: &dyn Content) -> bool {
    [media::OCI_INDEX, media::OCI_MANIFEST].contains(&content.root().media_type.as_str())
}

/// Reads `index.json` of a layout and returns the root digest tagged `tag`, if any.
pub fn layout_digest(dir: &Path, tag: &str) -> Option<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).ok()?).ok()?;
    index["manifests"].as_array()?.iter().find_map(|m| {
        let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str();
        (name == Some(tag) || name.is_none()).then(|| m["digest"].as_str().unwrap().to_string())
    })
}

/// A ustar archive holding one regular file (and nothing else), as a layer diff.
pub fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], 1_704_067_200); // 2024-01-01, fixed for determinism
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]); // end-of-archive marker
    out
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
    field[digits] = 0;
}

/// gzip with stored (uncompressed) deflate blocks: valid for every gunzip, needs no compressor.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}
