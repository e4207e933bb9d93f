//! Pure OCI types, no I/O: digests, repository names and references, media types, byte ranges.
//!
//! Owns: validation of everything a client or upstream hands us by name. Must not do I/O.

pub mod digest;
mod glob;
pub mod media;
pub mod range;
pub mod reference;

pub use digest::{Digest, DigestError, Hasher};
pub(crate) use glob::glob_match;
pub use range::RangeSpec;
pub use reference::{validate_name, NameError, Reference};
