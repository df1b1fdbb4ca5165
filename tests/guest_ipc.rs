//! The object model, first part: capabilities, ports, port sets and IPC, on both backends.
//! The in-guest `ktest ipc` case runs a server and a client in two spaces.

mod support;

use support::*;

#[test]
fn call_reply_capability_transfer_and_border_control() {
    for (who, run) in both("fluke.init=ktest,ipc,2000") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        // The child was given one port: it can name that and nothing else.
        run.assert_console(
            "ktest: ipc client: border: port reachable true, 0 other names reachable",
        );
        run.assert_console(
            "ktest: ipc client: 2000 calls, 0 bad replies; capability round trip ok",
        );
        run.assert_console(
            "ktest: ipc server: 2001 calls served, 0 bad badges, client exited Ok(0)",
        );
    }
}
