//! Kernel panics: report over serial, then end the VM with a failure status.

use crate::arch::platform;
use crate::kprintln;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    platform::irq_disable();
    match info.location() {
        Some(l) => kprintln!(
            "fluke: KERNEL PANIC at {}:{}: {}",
            l.file(),
            l.line(),
            info.message()
        ),
        None => kprintln!("fluke: KERNEL PANIC: {}", info.message()),
    }
    platform::exit(fluke_abi::status::KERNEL_PANIC);
}
