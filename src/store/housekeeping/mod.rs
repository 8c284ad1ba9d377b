//! Keeping the disk cache bounded and honest, on top of the backends: [`scan`] lists what is
//! stored, [`access`] tracks use without a write per read, [`pins`] says what must stay (and owns
//! the pin format), [`evict`] deletes the least recently used rest when over `max_size`,
//! [`verify`] re-hashes everything (`berth cache verify`), [`stats`] counts it.

pub mod access;
pub mod evict;
pub mod pins;
pub mod scan;
pub mod stats;
pub mod verify;
