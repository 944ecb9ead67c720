//! The plugins' global allocator (wasm32, Cargo feature `allocator`, on by default): a free
//! list per size class in front of the platform allocator (wasi-libc's `dlmalloc`).
//!
//! Why: every string or list the host lends a plugin is a `cabi_realloc` call into the guest
//! and a free after the call, and the plugins' own code allocates too. On the bench's five-step
//! chain the guests made about 75 allocations and 75 frees per request, and `dlmalloc`, `dlfree`
//! and Rust's allocator shims around them were about 31 k of the chain's 287 k instructions
//! (callgrind with the components' perf map, `docs/BENCHMARKS.md`, entry 32): some 400
//! instructions per allocation and free. A block that comes back to a free list of its size is
//! handed out again in a few instructions.
//!
//! Shape: sizes up to [`MAX_CACHED`] bytes (alignment up to 8) are rounded up to a power of two
//! from 16 bytes (nine classes, 16 B to 4 KiB); a freed block goes onto its class's list while
//! the list holds less than [`KEEP_BYTES`] bytes, and back to the platform allocator past that.
//! Larger or more aligned allocations go straight to the platform allocator. What this costs: up
//! to half a block's size lost to rounding, and at most 9 × [`KEEP_BYTES`] (288 KiB) of free
//! blocks kept per instance that only their own size class reuses.
//!
//! Opting out: a plugin with its own `#[global_allocator]` turns the SDK's off with
//! `default-features = false` (two global allocators do not link).

#![allow(unsafe_code, reason = "a global allocator hands out raw memory; each block says why it is sound")]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// The largest size (bytes) served from a free list.
pub(crate) const MAX_CACHED: usize = 4096;
/// At most this many bytes of free blocks are kept per size class.
pub(crate) const KEEP_BYTES: usize = 32 * 1024;

const MIN_SHIFT: u32 = 4; // the smallest class: 16 bytes
const CLASSES: usize = 9; // 16, 32, …, 4,096 bytes
const ALIGN: usize = 8; // the alignment every class block is allocated with

/// A free block: its first word links to the next free block of its class.
struct Free {
    next: *mut Free,
}

#[derive(Clone, Copy)]
struct List {
    head: *mut Free,
    len: usize,
}

/// The allocator: free lists over `A` (`std::alloc::System` on wasm32).
///
/// Single-threaded by construction: it is `Sync` only to be a `#[global_allocator]` on a
/// target without threads (wasm32 without the `atomics` feature), which is where the SDK
/// installs it. Native tests use their own instance from one thread.
pub(crate) struct ClassAlloc<A> {
    backing: A,
    lists: UnsafeCell<[List; CLASSES]>,
}

// SAFETY: installed only on wasm32 without `atomics`, where there is one thread (see the type's
// docs); tests use an instance from one thread.
unsafe impl<A: Sync> Sync for ClassAlloc<A> {}

impl<A> ClassAlloc<A> {
    /// An allocator with empty free lists over `backing`.
    pub(crate) const fn new(backing: A) -> Self {
        ClassAlloc { backing, lists: UnsafeCell::new([List { head: ptr::null_mut(), len: 0 }; CLASSES]) }
    }
}

/// The class of `layout`, or `None` when it is served by the platform allocator.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_CACHED || layout.align() > ALIGN {
        return None;
    }
    let bits = usize::BITS - (layout.size().max(1) - 1).leading_zeros();
    Some(bits.saturating_sub(MIN_SHIFT) as usize)
}

/// The layout every block of class `c` is allocated and freed with on the platform allocator.
#[inline]
fn block(c: usize) -> Layout {
    // SAFETY: 16 << c for c < 9 is a non-zero multiple of ALIGN, a power of two, far from
    // overflowing isize.
    unsafe { Layout::from_size_align_unchecked(1 << (MIN_SHIFT as usize + c), ALIGN) }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for ClassAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.backing.alloc(layout) };
        };
        // SAFETY: one thread (the type's docs), and no reference into the lists outlives
        // this call.
        let list = unsafe { &mut (*self.lists.get())[c] };
        if list.head.is_null() {
            // SAFETY: `block(c)` has a non-zero size.
            return unsafe { self.backing.alloc(block(c)) };
        }
        let taken = list.head;
        // SAFETY: `taken` is a free block this allocator linked, at least 16 bytes and aligned.
        list.head = unsafe { (*taken).next };
        list.len -= 1;
        taken.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class(layout).is_none() {
            // SAFETY: the caller's contract, passed on; the platform's `calloc` may know the
            // memory is zero already.
            return unsafe { self.backing.alloc_zeroed(layout) };
        }
        // SAFETY: as `alloc`; a block from a free list holds its last owner's bytes.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: the block came from `backing` with this layout (`alloc` above).
            return unsafe { self.backing.dealloc(ptr, layout) };
        };
        // SAFETY: as in `alloc`.
        let list = unsafe { &mut (*self.lists.get())[c] };
        if list.len >= KEEP_BYTES >> (MIN_SHIFT as usize + c) {
            // SAFETY: every block of class `c` was allocated from `backing` as `block(c)`.
            return unsafe { self.backing.dealloc(ptr, block(c)) };
        }
        let freed = ptr.cast::<Free>();
        // SAFETY: the block is the caller's to give back, at least 16 bytes, aligned to 8.
        unsafe { freed.write(Free { next: list.head }) };
        list.head = freed;
        list.len += 1;
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            (Some(a), Some(b)) if a == b => ptr,
            // SAFETY: the block came from `backing` with `layout`, and stays there.
            (None, None) => unsafe { self.backing.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: `new` is valid (above); the old block is live and `layout`'s.
                unsafe {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(all(feature = "allocator", target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: ClassAlloc<std::alloc::System> = ClassAlloc::new(std::alloc::System);

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn sizes_fall_into_power_of_two_classes_and_the_rest_goes_to_the_platform() {
        let at = |size, align| class(Layout::from_size_align(size, align).unwrap());
        assert_eq!(at(1, 1), Some(0));
        assert_eq!(at(16, 8), Some(0));
        assert_eq!(at(17, 1), Some(1));
        assert_eq!(at(600, 1), Some(6)); // a bearer token: a 1 KiB block
        assert_eq!(at(4096, 8), Some(8));
        assert_eq!(at(4097, 1), None);
        assert_eq!(at(32, 16), None);
        assert_eq!(block(0).size(), 16);
        assert_eq!(block(8).size(), MAX_CACHED);
    }

    #[test]
    fn a_freed_block_is_handed_out_again_for_any_size_of_its_class() {
        let a = ClassAlloc::new(System);
        let small = Layout::from_size_align(20, 4).unwrap();
        let same_class = Layout::from_size_align(32, 8).unwrap();
        unsafe {
            let p = a.alloc(small);
            p.write_bytes(0xAB, 20);
            a.dealloc(p, small);
            let q = a.alloc(same_class);
            assert_eq!(p, q, "the 32-byte class's free block comes back");
            let r = a.alloc(same_class);
            assert_ne!(q, r);
            a.dealloc(q, same_class);
            a.dealloc(r, same_class);
        }
    }

    #[test]
    fn a_zeroed_allocation_is_zero_also_when_it_reuses_a_block() {
        let a = ClassAlloc::new(System);
        let small = Layout::from_size_align(48, 8).unwrap();
        let large = Layout::from_size_align(10_000, 8).unwrap();
        unsafe {
            let p = a.alloc(small);
            p.write_bytes(0xAB, 48);
            a.dealloc(p, small);
            let q = a.alloc_zeroed(small);
            assert_eq!(p, q, "the freed block is reused");
            assert!((0..48).all(|i| q.add(i).read() == 0));
            let r = a.alloc_zeroed(large);
            assert!((0..10_000).all(|i| r.add(i).read() == 0));
            a.dealloc(q, small);
            a.dealloc(r, large);
        }
    }

    #[test]
    fn a_class_keeps_at_most_its_share_of_free_bytes() {
        let a = ClassAlloc::new(System);
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let keep = KEEP_BYTES / 4096;
        unsafe {
            let blocks: Vec<_> = (0..keep + 3).map(|_| a.alloc(layout)).collect();
            for p in blocks {
                a.dealloc(p, layout);
            }
            assert_eq!((*a.lists.get())[8].len, keep, "the rest went back to the platform allocator");
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_to_the_platform_and_back() {
        let a = ClassAlloc::new(System);
        unsafe {
            let mut layout = Layout::from_size_align(10, 1).unwrap();
            let mut p = a.alloc(layout);
            for i in 0..10 {
                p.add(i).write(i as u8);
            }
            // Within its class, in place; then to a bigger class, to the platform, and down.
            for size in [16, 100, 5000, 9000, 300, 10] {
                let q = a.realloc(p, layout, size);
                assert!(!q.is_null());
                if size == 16 {
                    assert_eq!(q, p, "16 bytes is the same class as 10");
                }
                for i in 0..10 {
                    assert_eq!(q.add(i).read(), i as u8, "after realloc to {size}");
                }
                q.add(size - 1).write(0xEE);
                p = q;
                layout = Layout::from_size_align(size, 1).unwrap();
            }
            a.dealloc(p, layout);
        }
    }

    #[test]
    fn many_live_blocks_of_mixed_sizes_keep_their_contents() {
        // A deterministic mix of allocations and frees; every live block is filled with a
        // byte of its own and checked before it is freed, so two blocks handed out twice would
        // show as overwritten contents.
        let a = ClassAlloc::new(System);
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        unsafe {
            for round in 0..20_000u32 {
                let r = next();
                if r % 3 == 0 && !live.is_empty() {
                    let (p, layout, fill) = live.swap_remove((r as usize / 3) % live.len());
                    assert!((0..layout.size()).all(|i| p.add(i).read() == fill), "block overwritten");
                    a.dealloc(p, layout);
                } else {
                    let size = 1 + (next() as usize % 6000);
                    let align = [1, 2, 4, 8, 16][next() as usize % 5];
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "aligned to {align}");
                    let fill = round as u8;
                    p.write_bytes(fill, size);
                    live.push((p, layout, fill));
                }
            }
            for (p, layout, fill) in live {
                assert!((0..layout.size()).all(|i| p.add(i).read() == fill));
                a.dealloc(p, layout);
            }
        }
    }
}
