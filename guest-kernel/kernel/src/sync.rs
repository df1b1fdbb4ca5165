//! Interior mutability for kernel globals.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A global the kernel mutates only where it can prove exclusive access: during boot on the
/// single CPU, or with interrupts disabled. Each `unsafe` use states which.
pub struct BootCell<T>(UnsafeCell<T>);

// SAFETY: fluke runs on one CPU; every mutable access is made with interrupts disabled
// (boot, trap handlers) as each call site documents.
unsafe impl<T> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    pub const fn new(value: T) -> Self {
        BootCell(UnsafeCell::new(value))
    }

    pub const fn as_ptr(&self) -> *mut T {
        self.0.get()
    }

    /// # Safety
    /// No other reference to the value may be live (single CPU, interrupts off).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self) -> &mut T {
        &mut *self.0.get()
    }

    /// # Safety
    /// No mutable reference to the value may be live.
    pub unsafe fn get(&self) -> &T {
        &*self.0.get()
    }
}

/// The cell of the kernel's state ([`crate::kernel::with_kernel`]): hands out its one
/// `&mut` for the length of a closure and checks that no second one is taken meanwhile.
/// An entry nested in another (an interrupt handler, a call that reaches back) panics
/// with a report instead of creating a second reference to the same state.
pub struct KernelCell<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the flag, swapped atomically, lets at most one `with` reach the value at a time,
// whatever CPU or interrupt it runs on.
unsafe impl<T: Send> Sync for KernelCell<T> {}

impl<T> KernelCell<T> {
    pub const fn new(value: T) -> Self {
        KernelCell {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with exclusive access to the value.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        if self.taken.swap(true, Ordering::Acquire) {
            panic!("the kernel state was taken twice: one kernel entry nested in another");
        }
        // SAFETY: `taken` was false and is now true until `f` returns, so this is the only
        // reference to the value (a panic in `f` ends the VM: nothing runs after it).
        let r = f(unsafe { &mut *self.value.get() });
        self.taken.store(false, Ordering::Release);
        r
    }
}
