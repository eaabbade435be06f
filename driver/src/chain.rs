//! Descriptor chain shapes.
//!
//! A chain is described as a list of segments, each of which becomes one
//! descriptor. Well-formed chains (readable parts first, then writable parts)
//! come from the helpers; hostile tests build any other shape by hand: raw
//! addresses outside guest memory, zero or huge lengths, loops, dangling
//! `next` indices, readable parts after writable ones.

use crate::memory::PAGE_SIZE;

/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: u32 = 16;

/// One descriptor of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Device-readable bytes, copied into a fresh guest buffer aligned to `align`.
    Readable {
        /// The bytes the device will read.
        data: Vec<u8>,
        /// Alignment of the guest buffer.
        align: u64,
    },
    /// A device-writable buffer of `len` bytes aligned to `align`.
    Writable {
        /// Buffer length.
        len: u32,
        /// Alignment of the guest buffer.
        align: u64,
    },
    /// A descriptor written verbatim; nothing is allocated for it.
    Raw {
        /// Guest-physical address (may lie outside guest memory).
        addr: u64,
        /// Length claimed by the descriptor.
        len: u32,
        /// Whether the WRITE flag is set.
        writable: bool,
    },
}

/// How the last descriptor of a chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tail {
    /// No NEXT flag: a proper end.
    #[default]
    End,
    /// NEXT pointing back at the descriptor of segment `n` (a loop).
    LoopTo(usize),
    /// NEXT pointing at a raw descriptor-table index (may be out of range or free).
    NextIndex(u16),
}

/// A descriptor chain to submit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// The descriptors, in chain order.
    pub segments: Vec<Segment>,
    /// How the chain ends.
    pub tail: Tail,
}

impl Chain {
    /// The layout the Linux virtio-fs driver uses: the request (header and
    /// arguments) readable, then the 16-byte `fuse_out_header` writable, then
    /// (if `reply_body > 0`) a separate page-aligned writable body buffer.
    pub fn request(request: Vec<u8>, reply_body: u32) -> Self {
        Self::request_with_data(request, Vec::new(), reply_body)
    }

    /// Like [`Chain::request`] with the reply's body landing in `len` bytes
    /// of guest memory the caller keeps at `addr` (a READ into a buffer it
    /// reuses, as a guest's page cache does).
    pub fn request_into(request: Vec<u8>, addr: u64, len: u32) -> Self {
        Chain::default()
            .push(Segment::Readable {
                data: request,
                align: 16,
            })
            .push(Segment::Writable {
                len: OUT_HEADER_LEN,
                align: 16,
            })
            .push(Segment::Raw {
                addr,
                len,
                writable: true,
            })
    }

    /// Like [`Chain::request`] with a page-aligned readable data part after the
    /// request (the payload of a WRITE).
    pub fn request_with_data(request: Vec<u8>, data: Vec<u8>, reply_body: u32) -> Self {
        let mut segments = vec![Segment::Readable {
            data: request,
            align: 16,
        }];
        if !data.is_empty() {
            segments.push(Segment::Readable {
                data,
                align: PAGE_SIZE,
            });
        }
        segments.push(Segment::Writable {
            len: OUT_HEADER_LEN,
            align: 16,
        });
        if reply_body > 0 {
            segments.push(Segment::Writable {
                len: reply_body,
                align: PAGE_SIZE,
            });
        }
        Chain {
            segments,
            tail: Tail::End,
        }
    }

    /// Appends a segment.
    pub fn push(mut self, segment: Segment) -> Self {
        self.segments.push(segment);
        self
    }

    /// Sets how the chain ends.
    pub fn with_tail(mut self, tail: Tail) -> Self {
        self.tail = tail;
        self
    }

    /// Total bytes of the writable segments.
    pub fn writable_len(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Writable { len, .. } => u64::from(*len),
                Segment::Raw {
                    len,
                    writable: true,
                    ..
                } => u64::from(*len),
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_layout_separates_header_and_page_aligned_body() {
        let c = Chain::request(vec![0; 40], 8192);
        assert_eq!(c.segments.len(), 3);
        assert!(matches!(c.segments[1], Segment::Writable { len: 16, .. }));
        assert!(matches!(
            c.segments[2],
            Segment::Writable {
                len: 8192,
                align: PAGE_SIZE
            }
        ));
        assert_eq!(c.writable_len(), 16 + 8192);
        let w = Chain::request_with_data(vec![0; 80], vec![1; 100], 16);
        assert_eq!(w.segments.len(), 4);
        assert_eq!(Chain::request(vec![0; 40], 0).segments.len(), 2);
    }
}
