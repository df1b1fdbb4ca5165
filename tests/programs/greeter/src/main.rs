//! Greets with its arguments; `crash` reads address 0 in a function of its own, for the
//! test that fault reports name it.
#![no_std]
#![no_main]

use fluke_rt::println;

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    println!(
        "greeter: hello from outside the default image ({} argument(s))",
        args.len()
    );
    for a in args.iter() {
        println!("greeter: arg {a}");
    }
    if args.get(0) == Some("crash") {
        crash_here();
    }
    7
}

#[inline(never)]
fn crash_here() {
    // SAFETY: not safe: the read of page 0 is the fault the test wants the kernel to report.
    let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
    println!("greeter: read {v}");
}
