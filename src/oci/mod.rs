//! Pure OCI types, no I/O: digests, repository names and references, image references as people
//! write them, media types, byte ranges.
//!
//! Owns: validation of everything a client or upstream hands us by name. Must not do I/O.

pub mod digest;
mod glob;
pub mod image_ref;
pub mod media;
pub mod range;
pub mod reference;

pub use digest::{Digest, DigestError, Hasher};
pub(crate) use glob::glob_match;
pub use image_ref::ImageRef;
pub use range::RangeSpec;
pub use reference::{validate_name, NameError, Reference};
