//! `procmgr [>] PROGRAM ARGS...`: the process-manager nester. It runs PROGRAM as its first
//! process and gives every process under it (at any depth: nesters pass its port on) a
//! multi-process environment through `fluke_rt::proc`: spawn a program of the image with
//! arguments, wait for a process and get its exit status, kill one, list them
//! (the protocol: `fluke_abi::procmgr`). Each process is a child environment of the nester
//! library; the manager interposes on nothing else, so every other kernel call a process
//! makes goes straight to the kernel. Exits with the first process's status once it ends
//! (ending the others).
//!
//! Each process gets its own port to the manager, badged with its id, so the manager knows
//! who asks: a process (with everything nested below it) may wait for and kill only the
//! processes it spawned. Exit reports from the manager's own watcher threads come on a
//! port of their own (badge 0), which no process holds.
#![no_std]
#![no_main]

use fluke_abi::procmgr::{self as pm, ProcInfo};
use fluke_nest::{Child, Command, Nester, Spec, CHILD_EXITED};
use fluke_rt::sys::{self, Msg, MAX_DATA, NO_CAP};
use fluke_rt::{println, Error};

const MAX_PROCS: usize = fluke_nest::MAX_CHILDREN;

#[derive(Clone, Copy)]
struct Proc {
    id: u64,
    name: ProcInfo,
    child: Child,
    /// Our thread that waits for the child's end (destroyed once it reported).
    watcher: u64,
    /// Held by us while the process runs: waiters block on it.
    done: u64,
    /// Who spawned it (0: we did, it is the first process).
    parent: u64,
    /// Its port to us (badge = its id).
    port: u64,
    /// `None` while running.
    status: Option<i32>,
}

struct Manager {
    nester: Nester,
    procs: [Option<Proc>; MAX_PROCS],
    next_id: u64,
    /// Where our watcher threads report (badge 0).
    control: u64,
    set: u64,
}

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let cmd = match Command::parse(&args, |_, _| Err("procmgr takes no options")) {
        Ok(c) => c,
        Err(e) => {
            println!("procmgr: {e}; usage: procmgr [>] PROGRAM ARGS...");
            return 2;
        }
    };
    let Ok(set) = sys::port_set_create() else {
        println!("procmgr: cannot create its port set");
        return 1;
    };
    let Ok(control) = sys::port_create(set, 0) else {
        println!("procmgr: cannot create its port");
        return 1;
    };
    let mut m = Manager {
        nester: Nester::new(),
        procs: [None; MAX_PROCS],
        next_id: 1,
        control,
        set,
    };
    let first = match m.spawn(cmd.program, cmd.args(), None, 0) {
        Ok(id) => id,
        Err(e) => {
            println!("procmgr: cannot start {}: {e:?}", cmd.program);
            return 1;
        }
    };
    m.serve(set, first)
}

impl Manager {
    fn slot_of(&mut self, id: u64) -> Option<&mut Proc> {
        self.procs.iter_mut().flatten().find(|p| p.id == id)
    }

    /// The budget policy, as `Spec::keep`: the first process gets everything but a reserve
    /// (an eighth, between 2 and 8 MiB, so that eight stacked managers still leave most
    /// memory to the program at the bottom); each later one half of what is left, at most
    /// 4 MiB (the memory of its program and stack is ours, in our slot for it).
    fn budget_for_next(&self) -> Result<u64, Error> {
        let (_, _, available) = sys::own_budget()?;
        if self.next_id == 1 {
            return Ok((available / 8).clamp(512, 2048));
        }
        let give = (available.saturating_sub(fluke_nest::NESTER_KEEP) / 2).min(1024);
        if give < 64 {
            return Err(Error::NoMemory);
        }
        Ok(fluke_abi::syscall::SPACE_EXACT | give)
    }

    /// Starts a process; `cap` (ours, moved to us by the asker) goes to it as name 0, and
    /// is dropped here whatever happens.
    fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        cap: Option<u64>,
        parent: u64,
    ) -> Result<u64, Error> {
        let started = self.try_spawn(name, args, cap, parent);
        if let Some(c) = cap {
            let _ = sys::cap_drop(c); // the child has its own copy, if it started
        }
        started
    }

    fn try_spawn(
        &mut self,
        name: &str,
        args: &[&str],
        cap: Option<u64>,
        parent: u64,
    ) -> Result<u64, Error> {
        let index = self
            .procs
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Exhausted)?;
        let keep = self.budget_for_next()?;
        let port = sys::port_create(self.set, self.next_id)?;
        let done = sys::mutex_create().inspect_err(|_| {
            let _ = sys::destroy(port);
        })?;
        let given = cap.map(|c| [(0, c), (pm::PORT_NAME, port)]);
        let own = [(pm::PORT_NAME, port)];
        let caps: &[(u64, u64)] = given.as_ref().map_or(&own, |g| &g[..]);
        let spec = Spec {
            caps,
            keep,
            ..Spec::default()
        };
        let started = sys::mutex_lock(done).and_then(|_| {
            self.nester.start_with(name, args, &spec).and_then(
                |child| match fluke_nest::watch_exit(&child, self.control, self.next_id) {
                    Ok(w) => Ok((child, w)),
                    Err(e) => {
                        self.nester.release(&child);
                        Err(e)
                    }
                },
            )
        });
        let (child, watcher) = started.inspect_err(|_| {
            let _ = sys::destroy(done);
            let _ = sys::destroy(port);
        })?;
        let id = self.next_id;
        self.next_id += 1;
        self.procs[index] = Some(Proc {
            id,
            name: ProcInfo::new(id, pm::RUNNING, 0, name),
            child,
            watcher,
            done,
            parent,
            port,
            status: None,
        });
        Ok(id)
    }

    /// The process ended (`status`): free its memory, keep its status for a waiter.
    fn ended(&mut self, id: u64, status: i32) {
        let Some(p) = self.slot_of(id).copied() else {
            return;
        };
        if p.status.is_some() {
            return;
        }
        let _ = sys::destroy(p.watcher);
        self.nester.release(&p.child);
        if let Some(slot) = self.slot_of(id) {
            slot.status = Some(status);
        }
        let _ = sys::mutex_unlock(p.done);
    }

    fn forget(&mut self, id: u64) {
        if let Some(slot) = self
            .procs
            .iter_mut()
            .find(|p| p.is_some_and(|p| p.id == id))
        {
            if let Some(p) = slot.take() {
                let _ = sys::destroy(p.done);
                let _ = sys::destroy(p.port);
            }
        }
    }

    /// One request; returns the reply (words, capability, data length in `data`).
    /// Process `id` if `asker` spawned it.
    fn own_child(&mut self, asker: u64, id: u64) -> Result<&mut Proc, Error> {
        match self.slot_of(id) {
            Some(p) if p.parent == asker => Ok(p),
            Some(_) => Err(Error::NoRights),
            None => Err(Error::NoSuchChild),
        }
    }

    /// One request from process `asker`; returns the reply (words, capability, data
    /// length in `data`).
    fn handle(
        &mut self,
        asker: u64,
        msg: &Msg,
        data: &mut [u8; MAX_DATA],
    ) -> ([u64; 4], u64, usize) {
        let err = |e: Error| ([pm::reply_code(Err(e)), 0, 0, 0], NO_CAP, 0);
        let (op, id) = (msg.words[0], msg.words[1]);
        match op {
            pm::SPAWN => {
                let cap = (msg.cap != NO_CAP).then_some(msg.cap);
                let len = (msg.data_got as usize).min(data.len());
                let mut words = [""; 32];
                let mut n = 0;
                let text = core::str::from_utf8(&data[..len]).unwrap_or("");
                for w in text.split('\0').filter(|w| !w.is_empty()) {
                    if n == words.len() {
                        if let Some(c) = cap {
                            let _ = sys::cap_drop(c);
                        }
                        return err(Error::InvalidArgument);
                    }
                    words[n] = w;
                    n += 1;
                }
                if n == 0 || core::str::from_utf8(&data[..len]).is_err() {
                    if let Some(c) = cap {
                        let _ = sys::cap_drop(c);
                    }
                    return err(Error::InvalidArgument);
                }
                match self.spawn(words[0], &words[1..n], cap, asker) {
                    Ok(id) => ([0, id, 0, 0], NO_CAP, 0),
                    Err(e) => err(e),
                }
            }
            pm::WAIT_HANDLE => match self.own_child(asker, id).map(|p| p.done) {
                // USE to lock it, GRANT so that it can travel in the reply.
                Ok(done) => match sys::cap_copy(done, 0b1001) {
                    Ok(copy) => ([0; 4], copy, 0),
                    Err(e) => err(e),
                },
                Err(e) => err(e),
            },
            pm::STATUS => match self.own_child(asker, id).map(|p| p.status) {
                Ok(Some(status)) => {
                    if msg.words[2] == pm::REAP {
                        self.forget(id);
                    }
                    ([0, pm::EXITED, status as i64 as u64, 0], NO_CAP, 0)
                }
                Ok(None) => ([0, pm::RUNNING, 0, 0], NO_CAP, 0),
                Err(e) => err(e),
            },
            pm::KILL => match self.own_child(asker, id).map(|p| p.status) {
                Ok(None) => {
                    self.ended(id, pm::KILLED_STATUS);
                    ([0; 4], NO_CAP, 0)
                }
                Ok(Some(_)) => ([0; 4], NO_CAP, 0),
                Err(e) => err(e),
            },
            pm::LIST => {
                let mut n = 0;
                for p in self.procs.iter().flatten().take(ProcInfo::MAX_PER_REPLY) {
                    let (state, status) = match p.status {
                        Some(s) => (pm::EXITED, s),
                        None => (pm::RUNNING, 0),
                    };
                    let info = ProcInfo::new(p.id, state, status, p.name.name());
                    data[n * ProcInfo::SIZE..(n + 1) * ProcInfo::SIZE]
                        .copy_from_slice(&info.to_bytes());
                    n += 1;
                }
                ([0, n as u64, 0, 0], NO_CAP, n * ProcInfo::SIZE)
            }
            _ => {
                if msg.cap != NO_CAP {
                    let _ = sys::cap_drop(msg.cap);
                }
                err(Error::InvalidArgument)
            }
        }
    }

    fn serve(&mut self, set: u64, first: u64) -> i32 {
        let mut inbox = [0u8; MAX_DATA];
        let mut outbox = [0u8; MAX_DATA];
        let mut msg = sys::ipc_wait_data(set, &mut inbox);
        loop {
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    println!("procmgr: receive failed: {e:?}");
                    return 1;
                }
            };
            let (words, cap, len) = if m.badge == 0 && m.words[0] == CHILD_EXITED {
                let (id, status) = (m.words[1], m.words[2] as i64 as i32);
                self.ended(id, status);
                if id == first {
                    return self.shut_down(status);
                }
                ([0; 4], NO_CAP, 0) // a reliable send: nobody waits for a reply
            } else {
                let (w, c, len) = if m.badge == 0 {
                    (
                        [pm::reply_code(Err(Error::InvalidArgument)), 0, 0, 0],
                        NO_CAP,
                        0,
                    )
                } else {
                    self.handle(m.badge, &m, &mut inbox)
                };
                if len > 0 {
                    outbox[..len].copy_from_slice(&inbox[..len]);
                }
                (w, c, len)
            };
            msg = sys::ipc_reply_wait_data(set, words, cap, &outbox[..len], &mut inbox);
        }
    }

    /// The first process ended: so does everything under us.
    fn shut_down(&mut self, status: i32) -> i32 {
        for i in 0..MAX_PROCS {
            if let Some(p) = self.procs[i] {
                self.ended(p.id, pm::KILLED_STATUS);
                self.forget(p.id);
            }
        }
        status
    }
}
