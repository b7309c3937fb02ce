//! Scratch files: state an operator keeps on disk instead of the heap
//! (`future`'s sealed runs; the event log of `weft-dataflows`).

use std::fs::File;

/// Frees `[offset, offset + len)` of `file` (`fallocate(PUNCH_HOLE)`: the
/// range reads back as zeros, the size is kept). `false` where the system
/// or the filesystem does not support it; the caller decides what then.
#[cfg(target_os = "linux")]
pub fn punch_hole(file: &File, offset: u64, len: u64) -> bool {
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .is_ok()
}

/// Frees `[offset, offset + len)` of `file`: unsupported here, `false`.
#[cfg(not(target_os = "linux"))]
pub fn punch_hole(_file: &File, _offset: u64, _len: u64) -> bool {
    false
}
