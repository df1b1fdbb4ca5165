//! IPC: calls, replies, waits and sends through ports and port sets.
//!
//! A client's call and a server's reply-and-wait are each one kernel entry, with the four
//! message words in registers (as L4/seL4 Call and ReplyRecv). When a server waits, a call
//! hands the CPU straight to it, and its reply hands it straight back: no run-queue trip.
//!
//! Every blocked IPC operation is restartable (the atomic API): a thread waits with its
//! RIP on its `syscall` instruction and its arguments in its registers, so its exported
//! state fully describes what it is doing. Completing the operation on its behalf writes
//! the results and steps RIP past the instruction. A client blocked waiting for a reply
//! re-sends its call if restarted: calls are idempotent, as in Fluke.

use super::object::{CallResult, Reply};
use crate::kernel::sched::{self, Next};
use crate::kernel::thread::{Thread, ThreadId, ThreadState};
use crate::kernel::{Caller, Kernel, ObjCap, ObjRef};
use fluke_abi::syscall::ipc::{MAX_DATA, NO_CAP};
use fluke_abi::syscall::{encode, Call, Error};
use fluke_kcore::cap::Rights;
use fluke_kcore::ipc::{receive_buffer, Delivery, Outgoing};
use fluke_kcore::slab::{Id, Slab};
use fluke_kcore::user_regs;

/// Whether a thread in a queue is still there to take a message.
fn alive(threads: &Slab<Thread>, t: ThreadId) -> bool {
    threads
        .get(t)
        .is_some_and(|th| th.state != ThreadState::Dead)
}

/// The first live server waiting on `set`.
fn pop_server(k: &mut Kernel, set: Id) -> Option<ThreadId> {
    let threads = &k.threads;
    k.port_sets
        .get_mut(set)
        .and_then(|s| s.pop_server(|t| alive(threads, t)))
}

fn pop_caller(k: &mut Kernel, set: Id) -> Option<ThreadId> {
    let threads = &k.threads;
    k.port_sets
        .get_mut(set)
        .and_then(|s| s.pop_caller(|t| alive(threads, t)))
}

/// The capability table of a thread's space.
fn caps_of(k: &mut Kernel, tid: ThreadId) -> Option<&mut fluke_kcore::cap::CapTable<ObjRef>> {
    k.thread_space(tid).map(|s| &mut s.caps)
}

/// Resolves a port of thread `tid`'s for sending: `(set, badge)`.
fn port_of(k: &mut Kernel, tid: ThreadId, name: u64) -> Result<(Id, u64), Error> {
    let caps = caps_of(k, tid).ok_or(Error::InvalidArgument)?;
    let ObjRef::Port(p) = caps.check(name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    let port = *k.ports.get(p).ok_or(Error::BadCap)?;
    // A port whose set was destroyed leads nowhere.
    k.port_sets.get(port.set).ok_or(Error::BadCap)?;
    Ok((port.set, port.badge))
}

fn set_of(k: &mut Kernel, c: Caller, name: u64) -> Result<Id, Error> {
    let ObjRef::PortSet(s) = k.lookup(c, name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    k.port_sets.get(s).ok_or(Error::BadCap)?;
    Ok(s)
}

/// The capability a sender attaches (from its `r9`), taken out of its table; it must carry
/// the GRANT right.
fn take_cap(k: &mut Kernel, from: ThreadId, name: u64) -> Result<Option<ObjCap>, Error> {
    if name == NO_CAP {
        return Ok(None);
    }
    let caps = caps_of(k, from).ok_or(Error::InvalidArgument)?;
    caps.check(name, Rights::GRANT)?;
    Ok(Some(caps.remove(name)?))
}

/// Copies `from`'s message registers (words, attached capability, data) into `to`'s, with
/// `rax_value` in RAX. If `to` is blocked on its `syscall` instruction, steps it past.
///
/// Decode first: the data is copied in and the receiver's buffer written before anything
/// else changes; a page only a keeper has fails the whole transfer with nothing changed.
fn transfer(k: &mut Kernel, from: ThreadId, to: ThreadId, rax_value: u64) -> Result<(), Error> {
    k.keeper_fault = None;
    let msg = Outgoing::from_regs(k.regs(from).ok_or(Error::PeerGone)?)?;
    let mut data = [0u8; MAX_DATA];
    let data = &mut data[..msg.data_len];
    if !data.is_empty() {
        let from_pid = k.pid_of(from).ok_or(Error::PeerGone)?;
        k.space_ref(from_pid).ok_or(Error::PeerGone)?;
        super::usermem::copy_in(k, from_pid, msg.data_ptr, data)?;
    }
    // The data goes into the receiver's buffer, truncated to fit. A buffer page only its
    // keeper can bring back fails the whole transfer (nothing has changed yet): the thread
    // making the call takes the fault and re-executes it.
    let (buffer, fits) = receive_buffer(k.regs(to).ok_or(Error::PeerGone)?, data.len());
    let to_pid = k.pid_of(to).filter(|&p| k.space_ref(p).is_some());
    let delivered = match to_pid {
        Some(pid) if fits > 0 => match super::usermem::copy_out(k, pid, buffer, &data[..fits]) {
            Ok(()) => fits,
            Err(e) if k.keeper_fault.is_some() => return Err(e),
            Err(_) => 0,
        },
        _ => 0,
    };
    // Invoke: nothing below fails once the capability is taken.
    let cap = take_cap(k, from, msg.cap)?;
    let received = match cap {
        Some(cap) => match caps_of(k, to).map(|t| t.insert(cap)) {
            Some(Ok(name)) => u64::from(name),
            _ => {
                // The receiver's table is full: the capability stays with the sender.
                if let Some(t) = caps_of(k, from) {
                    let _ = t.insert_at(msg.cap as u32, cap);
                }
                NO_CAP
            }
        },
        None => NO_CAP,
    };
    let blocked = k.threads.get(to).is_some_and(|t| !t.runnable());
    let delivery = Delivery {
        rax: rax_value,
        words: msg.words,
        cap: received,
        sent: data.len(),
        delivered,
    };
    delivery.write(k.regs(to).ok_or(Error::PeerGone)?, blocked);
    Ok(())
}

/// `transfer` to a server just taken off its set's wait queue; if the message cannot be
/// delivered (a bad data buffer, say) the server goes back to the head of the queue.
fn deliver_or_requeue(
    k: &mut Kernel,
    from: ThreadId,
    server: ThreadId,
    set: Id,
    badge: u64,
) -> Result<(), Error> {
    transfer(k, from, server, badge).inspect_err(|_| {
        if let Some(s) = k.port_sets.get_mut(set) {
            s.return_server(server);
        }
    })
}

/// Makes the caller's receive buffer (`r14`, capacity `r15`) present before it waits, so
/// that a message finds it there (a page a pager evicted is brought back first; the call
/// is re-executed after the keeper's reply).
fn prefault_receive_buffer(k: &mut Kernel, c: Caller) -> Result<(), Error> {
    let Some(r) = k.regs(c.tid) else {
        return Ok(());
    };
    let (buf, cap) = (r.r14, r.r15.min(MAX_DATA as u64));
    if cap == 0 {
        return Ok(());
    }
    super::usermem::prefault_for_call(k, c.pid, buf, cap, true)
}

/// A queued caller's message could not be taken because a page of its data only a keeper
/// can provide: the caller now waits for that keeper instead, exactly as if it had faulted,
/// and re-executes its call after the keeper's reply. False if that is not the case.
fn caller_to_keeper(k: &mut Kernel, caller: ThreadId) -> bool {
    let Some(f) = k.keeper_fault else {
        return false;
    };
    if k.pid_of(caller) != Some(f.pid) {
        return false; // not the caller's page (the receiver's, handled by the caller)
    }
    k.keeper_fault = None;
    let Some(port) = k.ports.get(f.port).copied() else {
        return false;
    };
    let Some(pset) = k.port_sets.get_mut(port.set) else {
        return false;
    };
    pset.push_caller(caller);
    // A keeper thread already waiting re-executes its wait and finds the fault.
    let waiting = pop_server(k, port.set);
    if let Some(t) = k.threads.get_mut(caller) {
        t.pending_fault = Some((port.badge, f.words));
        t.state = ThreadState::IpcCallQueued(port.set);
    }
    if let Some(w) = waiting {
        sched::make_runnable(k, w);
    }
    true
}

/// Records that `server` now owes `client` a reply, and what the client waits in.
fn pair(k: &mut Kernel, server: ThreadId, client: ThreadId, client_state: ThreadState) {
    if let Some(t) = k.threads.get_mut(server) {
        t.reply_to = Some(client);
    }
    if let Some(t) = k.threads.get_mut(client) {
        t.state = client_state;
    }
}

/// A thread waiting on `set`; if there is none, the caller is queued on the set and
/// blocked with its call in restart form, to be taken by the next server that waits
/// (`None`: the caller then returns [`Next::Schedule`]).
fn waiting_server_or_queue(k: &mut Kernel, me: ThreadId, set: Id) -> Option<ThreadId> {
    if let Some(w) = pop_server(k, set) {
        return Some(w);
    }
    if let Some(s) = k.port_sets.get_mut(set) {
        s.push_caller(me);
    }
    sched::block_in_call(k, me, ThreadState::IpcCallQueued(set));
    None
}

/// `ipc_call(port)`: sends the message and waits for the reply.
pub fn call(k: &mut Kernel, c: Caller, port_name: u64) -> CallResult {
    let (set, badge) = port_of(k, c.tid, port_name)?;
    prefault_receive_buffer(k, c)?;
    let Some(w) = waiting_server_or_queue(k, c.tid, set) else {
        return Ok(Reply::Then(Next::Schedule));
    };
    deliver_or_requeue(k, c.tid, w, set, badge)?;
    if let Some(t) = k.threads.get_mut(w) {
        t.reply_to = Some(c.tid);
    }
    sched::block_in_call(k, c.tid, ThreadState::WaitReply(w));
    Ok(Reply::Then(Next::HandOff {
        to: w,
        requeue: false,
    }))
}

/// `ipc_send(port)`: delivered at most once, to a server waiting now (1), or dropped (0).
pub fn send(k: &mut Kernel, c: Caller, port_name: u64) -> CallResult {
    let (set, badge) = port_of(k, c.tid, port_name)?;
    let Some(w) = pop_server(k, set) else {
        return Ok(Reply::Value(0)); // nobody listens: dropped (at most once)
    };
    deliver_or_requeue(k, c.tid, w, set, badge)?;
    if let Some(t) = k.threads.get_mut(w) {
        t.reply_to = None;
    }
    if let Some(r) = k.regs(c.tid) {
        r.rax = encode(Ok(1));
    }
    Ok(Reply::Then(Next::HandOff {
        to: w,
        requeue: true,
    }))
}

/// `ipc_send_reliable(port)`: delivered exactly once; waits (restartably) until taken.
pub fn send_reliable(k: &mut Kernel, c: Caller, port_name: u64) -> CallResult {
    let (set, badge) = port_of(k, c.tid, port_name)?;
    let Some(w) = waiting_server_or_queue(k, c.tid, set) else {
        return Ok(Reply::Then(Next::Schedule));
    };
    deliver_or_requeue(k, c.tid, w, set, badge)?;
    if let Some(t) = k.threads.get_mut(w) {
        t.reply_to = None;
    }
    if let Some(r) = k.regs(c.tid) {
        r.rax = 0;
    }
    Ok(Reply::Then(Next::HandOff {
        to: w,
        requeue: true,
    }))
}

/// `ipc_wait(set)`, and the waiting half of `ipc_reply_wait` (`replied_to`: the client just
/// answered, to switch to directly if no other message is pending).
pub fn wait(k: &mut Kernel, c: Caller, set_name: u64, replied_to: Option<ThreadId>) -> CallResult {
    let me = c.tid;
    let set = set_of(k, c, set_name)?;
    if replied_to.is_none() {
        prefault_receive_buffer(k, c)?; // (reply_wait did it before replying)
    }
    let wake_replied = |k: &mut Kernel| {
        if let Some(r) = replied_to {
            sched::make_runnable(k, r);
        }
    };
    while let Some(caller) = pop_caller(k, set) {
        let pending = k
            .threads
            .get_mut(caller)
            .and_then(|t| t.pending_fault.take());
        if let Some((badge, words)) = pending {
            deliver_fault(k, me, badge, words);
            pair(k, me, caller, ThreadState::FaultWait(me));
            wake_replied(k);
            return Ok(Reply::Value(badge));
        }
        let badge = match k.threads.get(caller).map(|t| t.regs.rdi) {
            Some(port_name) => port_of(k, caller, port_name).map(|(_, b)| b),
            None => Err(Error::PeerGone),
        };
        match badge.and_then(|b| transfer(k, caller, me, b).map(|_| b)) {
            Ok(b)
                if k.threads
                    .get(caller)
                    .is_some_and(|t| t.regs.rax == Call::IpcSendReliable as u64) =>
            {
                // A reliable send is complete once taken: no reply.
                complete(k, caller, Ok(0));
                if let Some(t) = k.threads.get_mut(me) {
                    t.reply_to = None;
                }
                wake_replied(k);
                return Ok(Reply::Value(b));
            }
            Ok(b) => {
                pair(k, me, caller, ThreadState::WaitReply(me));
                wake_replied(k);
                return Ok(Reply::Value(b));
            }
            // The caller's data is out with its keeper: it waits for it, then re-sends.
            Err(_) if caller_to_keeper(k, caller) => {}
            // Our own buffer is: the caller stays first in line while we fetch it.
            Err(e) if k.keeper_fault.is_some() => {
                if let Some(s) = k.port_sets.get_mut(set) {
                    s.return_caller(caller);
                }
                return Err(e);
            }
            Err(e) => complete(k, caller, Err(e)),
        }
    }
    // An interrupt queued for a port of this set (none reached a waiting thread). It is not
    // a call: a reply this thread owes stays owed.
    if let Some((badge, words)) = super::interrupt::take_for_set(k, set) {
        deliver_fault(k, me, badge, words);
        wake_replied(k);
        return Ok(Reply::Value(badge));
    }
    if let Some(s) = k.port_sets.get_mut(set) {
        s.push_server(me);
    }
    sched::block_in_call(k, me, ThreadState::IpcWait(set));
    Ok(Reply::Then(match replied_to {
        Some(r) => Next::HandOff {
            to: r,
            requeue: false,
        },
        None => Next::Schedule,
    }))
}

/// Completes a queued sender's call with `result` (RIP past its `syscall`) and makes it
/// runnable: a reliable send taken, or a call whose port vanished.
fn complete(k: &mut Kernel, t: ThreadId, result: Result<u64, Error>) {
    if let Some(r) = k.regs(t) {
        r.rax = encode(result);
        user_regs::complete_call(r);
    }
    sched::make_runnable(k, t);
}

/// `ipc_reply_wait(set)`: replies to the client this thread owes a reply, then waits.
pub fn reply_wait(k: &mut Kernel, c: Caller, set_name: u64) -> CallResult {
    let me = c.tid;
    set_of(k, c, set_name)?;
    prefault_receive_buffer(k, c)?;
    let client = k.threads.get_mut(me).and_then(|t| t.reply_to.take());
    let mut replied = None;
    if let Some(client) = client {
        let state = k.threads.get(client).map(|t| t.state);
        if state == Some(ThreadState::FaultWait(me)) {
            // A faulting thread: the reply only lets it re-execute the faulting access.
            if let Some(t) = k.threads.get_mut(client) {
                t.state = ThreadState::Runnable;
            }
            replied = Some(client);
        }
        if state == Some(ThreadState::WaitReply(me)) {
            if let Err(e) = transfer(k, me, client, 0) {
                // Not replied: the client still waits for this thread (which may
                // re-execute the call once its keeper brought the reply's data in).
                if let Some(t) = k.threads.get_mut(me) {
                    t.reply_to = Some(client);
                }
                return Err(e);
            }
            if let Some(t) = k.threads.get_mut(client) {
                t.state = ThreadState::Runnable;
            }
            replied = Some(client);
        }
    }
    // The reply is done: an error from here on must not lose the client.
    let r = wait(k, c, set_name, replied);
    if let (Err(_), Some(client)) = (&r, replied) {
        sched::make_runnable(k, client);
    }
    r
}

/// A thread is going away: take it out of every queue, and fail the call of a client it
/// was serving.
pub fn forget_thread(k: &mut Kernel, tid: ThreadId) {
    for id in k.port_sets.ids() {
        if let Some(s) = k.port_sets.get_mut(id) {
            s.forget(tid);
        }
    }
    if let Some(client) = k.threads.get_mut(tid).and_then(|t| t.reply_to.take()) {
        match k.threads.get(client).map(|t| t.state) {
            Some(ThreadState::WaitReply(s)) if s == tid => {
                complete(k, client, Err(Error::PeerGone))
            }
            // Its keeper went away: it re-executes the access (and faults again).
            Some(ThreadState::FaultWait(s)) if s == tid => sched::make_runnable(k, client),
            _ => {}
        }
    }
}

/// Writes a kernel-made message (a fault) into a receiving thread's registers.
fn deliver_fault(k: &mut Kernel, to: ThreadId, badge: u64, words: [u64; 4]) {
    let blocked = k.threads.get(to).is_some_and(|t| !t.runnable());
    if let Some(dst) = k.regs(to) {
        Delivery::fault(badge, words).write(dst, blocked);
    }
}

/// Sends a fault message to a keeper port on behalf of the faulting thread `me` (the
/// running one), which waits for the keeper's reply with its registers as they were at
/// the fault. `None` if the port is gone (the fault is then unhandled).
pub fn send_fault(k: &mut Kernel, me: ThreadId, port: Id, words: [u64; 4]) -> Option<Next> {
    let p = *k.ports.get(port)?;
    k.port_sets.get(p.set)?;
    match pop_server(k, p.set) {
        Some(w) => {
            deliver_fault(k, w, p.badge, words);
            pair(k, w, me, ThreadState::FaultWait(w));
            Some(Next::HandOff {
                to: w,
                requeue: false,
            })
        }
        None => {
            if let Some(s) = k.port_sets.get_mut(p.set) {
                s.push_caller(me);
            }
            if let Some(t) = k.threads.get_mut(me) {
                t.pending_fault = Some((p.badge, words));
                t.state = ThreadState::IpcCallQueued(p.set);
            }
            Some(Next::Schedule)
        }
    }
}
