//! Interior mutability for kernel globals.

use core::cell::UnsafeCell;

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
