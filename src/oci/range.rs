//! Byte ranges of a blob, as a client asks for them (`Range: bytes=a-b`, `bytes=a-`, `bytes=-n`).

/// A requested byte range, before the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// First byte and optional last byte, inclusive.
    From(u64, Option<u64>),
    /// The last n bytes.
    Suffix(u64),
}

/// A range that does not overlap a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("requested range not satisfiable (size {size})")]
pub struct Unsatisfiable {
    /// The blob's size.
    pub size: u64,
}

impl RangeSpec {
    /// The half-open byte range within a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<std::ops::Range<u64>, Unsatisfiable> {
        let r = match self {
            RangeSpec::From(start, end) => {
                start..end.map(|e| e.saturating_add(1)).unwrap_or(size).min(size)
            }
            RangeSpec::Suffix(n) => size.saturating_sub(n)..size,
        };
        if r.start >= r.end {
            return Err(Unsatisfiable { size });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve() {
        let cases = [
            (RangeSpec::From(0, Some(9)), 100, Some(0..10)),
            (RangeSpec::From(90, None), 100, Some(90..100)),
            (RangeSpec::From(90, Some(500)), 100, Some(90..100)),
            (RangeSpec::Suffix(10), 100, Some(90..100)),
            (RangeSpec::Suffix(1000), 100, Some(0..100)),
            (RangeSpec::From(100, None), 100, None),
            (RangeSpec::Suffix(0), 100, None),
        ];
        for (spec, size, want) in cases {
            assert_eq!(spec.resolve(size).ok(), want, "{spec:?}");
        }
    }
}
