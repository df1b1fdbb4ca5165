//! The default image's first program.
#![no_std]
#![no_main]

use fluke_rt::println;

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    println!("hello from user mode ({} argument(s))", args.len());
    for a in args.iter() {
        println!("  arg: {a}");
    }
    0
}
