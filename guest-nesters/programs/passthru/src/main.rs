//! `passthru [>] PROGRAM ARGS...`: starts PROGRAM as a child environment through the
//! nester library and passes everything through: the child's kernel calls go straight to
//! the kernel. Exits with the child's status. Stacks: `passthru > passthru > ... > app`.
#![no_std]
#![no_main]

use fluke_rt::{println, sys};

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let cmd = match fluke_nest::Command::parse(&args, |_, _| Err("passthru takes no options")) {
        Ok(c) => c,
        Err(e) => {
            println!("passthru: {e}; usage: passthru [>] PROGRAM ARGS...");
            return 2;
        }
    };
    let program = cmd.program;
    let mut nester = fluke_nest::Nester::new();
    match nester.start(program, cmd.args(), &[]) {
        Ok(child) => {
            let status = sys::wait(child.pid);
            nester.release(&child); // its memory, and its window at a pager above
            match status {
                Ok(status) => status,
                Err(e) => {
                    println!("passthru: waiting for {program} failed: {e:?}");
                    1
                }
            }
        }
        Err(e) => {
            println!("passthru: cannot start {program}: {e:?}");
            1
        }
    }
}
