//! Cache tests: counting upstream, real storage.
