//! `passthru PROGRAM ARGS...`: starts PROGRAM as a child environment through the nester
//! library and passes everything through: the child's kernel calls go straight to the
//! kernel. Exits with the child's status. Stacks: `passthru passthru ... app`.
#![no_std]
#![no_main]

use fluke_rt::{println, sys};

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let Some(program) = args.get(0) else {
        println!("passthru: usage: passthru PROGRAM ARGS...");
        return 2;
    };
    let mut rest: [&str; 31] = [""; 31];
    let n = (args.len() - 1).min(rest.len());
    for (i, slot) in rest.iter_mut().enumerate().take(n) {
        *slot = args.get(i + 1).unwrap_or("");
    }
    let mut nester = fluke_nest::Nester::new();
    match nester.start(program, &rest[..n], &[]) {
        Ok(child) => match sys::wait(child.pid) {
            Ok(status) => status,
            Err(e) => {
                println!("passthru: waiting for {program} failed: {e:?}");
                1
            }
        },
        Err(e) => {
            println!("passthru: cannot start {program}: {e:?}");
            1
        }
    }
}
