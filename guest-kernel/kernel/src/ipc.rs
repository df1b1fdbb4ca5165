//! Ports, port sets and IPC.
//!
//! A client's call and a server's reply-and-wait are each one kernel entry, with the four
//! message words in registers (as L4/seL4 Call and ReplyRecv). When a server waits, a call
//! switches straight to it, and its reply switches straight back: no run-queue trip.
//!
//! Every blocked IPC operation is restartable (the atomic API): a thread waits with its
//! RIP on its `syscall` instruction and its arguments in its registers, so its exported
//! state fully describes what it is doing. Completing the operation on its behalf writes
//! the results and steps RIP past the instruction. A client blocked waiting for a reply
//! re-sends its call if restarted: calls are idempotent, as in Fluke.

use crate::arch::user::UserRegs;
use fluke_kcore::user_regs;
use crate::object::{ObjCap, ObjRef};
use crate::sched::{self, kernel};
use crate::thread::{ThreadId, ThreadState};
use alloc::collections::VecDeque;
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::{encode, Call, Error};
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;

pub struct Port {
    pub set: Id,
    pub badge: u64,
}

#[derive(Default)]
pub struct PortSet {
    /// Server threads blocked in `ipc_wait` / `ipc_reply_wait`.
    waiting: VecDeque<ThreadId>,
    /// Client threads whose call found no waiting server.
    callers: VecDeque<ThreadId>,
}

use fluke_abi::syscall::ipc::MAX_DATA;

/// Badges travel in RAX, where values in [-4095, -1] mean errors.
const MAX_BADGE: u64 = i64::MAX as u64;

fn regs_of(tid: ThreadId) -> Option<&'static mut UserRegs> {
    kernel().threads.get_mut(tid).map(|t| &mut *t.regs)
}

fn space_of(tid: ThreadId) -> Option<&'static mut crate::space::Space> {
    let k = kernel();
    let pid = k.threads.get(tid)?.process;
    k.processes.get_mut(pid)?.space.as_mut()
}

/// The capability table of a thread's space.
fn caps_of(tid: ThreadId) -> Option<&'static mut fluke_kcore::cap::CapTable<ObjRef>> {
    let k = kernel();
    let pid = k.threads.get(tid)?.process;
    k.processes
        .get_mut(pid)?
        .space
        .as_mut()
        .map(|s| &mut s.caps)
}

fn current() -> Result<ThreadId, Error> {
    sched::current().ok_or(Error::InvalidArgument)
}

pub fn port_set_create() -> Result<u64, Error> {
    let id = kernel()
        .port_sets
        .insert(PortSet::default())
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::PortSet(id)).inspect_err(|_| {
        kernel().port_sets.remove(id);
    })
}

pub fn port_create(set_name: u64, badge: u64) -> Result<u64, Error> {
    if badge > MAX_BADGE {
        return Err(Error::InvalidArgument);
    }
    let caps = caps_of(current()?).ok_or(Error::InvalidArgument)?;
    let ObjRef::PortSet(set) = caps.check(set_name, Rights::WRITE)?.object else {
        return Err(Error::WrongType);
    };
    let id = kernel()
        .ports
        .insert(Port { set, badge })
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::Port(id)).inspect_err(|_| {
        kernel().ports.remove(id);
    })
}

pub fn cap_drop(name: u64) -> Result<u64, Error> {
    let caps = caps_of(current()?).ok_or(Error::InvalidArgument)?;
    caps.remove(name)?;
    Ok(0)
}

pub fn cap_copy(name: u64, rights: u64) -> Result<u64, Error> {
    let caps = caps_of(current()?).ok_or(Error::InvalidArgument)?;
    let rights = Rights::from_bits(rights).ok_or(Error::InvalidArgument)?;
    let cap = caps.check(name, Rights::GRANT)?;
    let copy = ObjCap {
        object: cap.object,
        rights: cap.rights.intersect(rights),
    };
    Ok(u64::from(caps.insert(copy)?))
}

/// Resolves a port for sending: `(set, badge)`.
fn port_of(tid: ThreadId, name: u64) -> Result<(Id, u64), Error> {
    let caps = caps_of(tid).ok_or(Error::InvalidArgument)?;
    let ObjRef::Port(p) = caps.check(name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    let port = kernel().ports.get(p).ok_or(Error::BadCap)?;
    // A port whose set was destroyed leads nowhere.
    kernel().port_sets.get(port.set).ok_or(Error::BadCap)?;
    Ok((port.set, port.badge))
}

fn set_of(tid: ThreadId, name: u64) -> Result<Id, Error> {
    let caps = caps_of(tid).ok_or(Error::InvalidArgument)?;
    let ObjRef::PortSet(s) = caps.check(name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    kernel().port_sets.get(s).ok_or(Error::BadCap)?;
    Ok(s)
}

/// The capability a sender attaches (from its `r9`), taken out of its table; it must carry
/// the GRANT right.
fn take_cap(from: ThreadId, name: u64) -> Result<Option<ObjCap>, Error> {
    if name == NO_CAP {
        return Ok(None);
    }
    let caps = caps_of(from).ok_or(Error::InvalidArgument)?;
    caps.check(name, Rights::GRANT)?;
    Ok(Some(caps.remove(name)?))
}

/// Copies `from`'s message registers (words, attached capability) into `to`'s, with
/// `rax_value` in RAX. If `to` is blocked on its `syscall` instruction, steps it past.
fn transfer(from: ThreadId, to: ThreadId, rax_value: u64) -> Result<(), Error> {
    kernel().keeper_fault = None;
    let src = regs_of(from).ok_or(Error::PeerGone)?;
    let (words, cap_name) = ([src.rsi, src.rdx, src.r10, src.r8], src.r9);
    let (data_ptr, data_len) = (src.r12, src.r13);
    if data_len > MAX_DATA as u64 {
        return Err(Error::InvalidArgument);
    }
    let mut data = [0u8; MAX_DATA];
    let data = &mut data[..data_len as usize];
    if !data.is_empty() {
        space_of(from)
            .ok_or(Error::PeerGone)?
            .copy_in(data_ptr, data)?;
    }
    let dst = regs_of(to).ok_or(Error::PeerGone)?;
    // The data goes into the receiver's buffer (r14, capacity r15), truncated to fit; r13
    // says how much was sent, r15 how much arrived. A buffer page only its keeper can
    // bring back fails the whole transfer (nothing has changed yet): the thread making
    // the call takes the fault and re-executes it.
    let fits = data
        .len()
        .min(usize::try_from(dst.r15).unwrap_or(usize::MAX));
    let buffer = dst.r14;
    let delivered = match space_of(to) {
        Some(space) if fits > 0 => match space.copy_out(buffer, &data[..fits]) {
            Ok(()) => fits,
            Err(e) if kernel().keeper_fault.is_some() => return Err(e),
            Err(_) => 0,
        },
        _ => 0,
    };
    let cap = take_cap(from, cap_name)?;
    let received = match cap {
        Some(c) => match caps_of(to).map(|t| t.insert(c)) {
            Some(Ok(name)) => u64::from(name),
            _ => {
                // The receiver's table is full: the capability stays with the sender.
                if let Some(t) = caps_of(from) {
                    let _ = t.insert_at(cap_name as u32, c);
                }
                NO_CAP
            }
        },
        None => NO_CAP,
    };
    let dst = regs_of(to).ok_or(Error::PeerGone)?;
    [dst.rsi, dst.rdx, dst.r10, dst.r8] = words;
    dst.r9 = received;
    dst.r13 = data.len() as u64;
    dst.r15 = delivered as u64;
    dst.rax = rax_value;
    let blocked = kernel()
        .threads
        .get(to)
        .is_some_and(|t| t.state != ThreadState::Runnable);
    if blocked {
        user_regs::complete_call(dst);
    }
    Ok(())
}

/// `transfer` to a server just taken off its set's wait queue; if the message cannot be
/// delivered (a bad data buffer, say) the server goes back to the head of the queue.
fn deliver_or_requeue(from: ThreadId, server: ThreadId, set: Id, badge: u64) -> Result<(), Error> {
    transfer(from, server, badge).inspect_err(|_| {
        if let Some(s) = kernel().port_sets.get_mut(set) {
            s.waiting.push_front(server);
        }
    })
}

/// Makes the current thread's receive buffer (`r14`, capacity `r15`) present before it
/// waits, so that a message finds it there (a page a pager evicted is brought back first;
/// the call is re-executed after the keeper's reply).
fn prefault_receive_buffer(me: ThreadId) -> Result<(), Error> {
    let Some(r) = regs_of(me) else { return Ok(()) };
    let (buf, cap) = (r.r14, r.r15.min(MAX_DATA as u64));
    if cap == 0 {
        return Ok(());
    }
    crate::memory::prefault_current(buf, cap, true)
}

/// A queued caller's message could not be taken because a page of its data only a keeper
/// can provide: the caller now waits for that keeper instead, exactly as if it had faulted,
/// and re-executes its call after the keeper's reply. False if that is not the case.
fn caller_to_keeper(c: ThreadId) -> bool {
    let k = kernel();
    let Some(f) = k.keeper_fault else {
        return false;
    };
    if k.threads.get(c).map(|t| t.process) != Some(f.pid) {
        return false; // not the caller's page (the receiver's, handled by the caller)
    }
    k.keeper_fault = None;
    let Some((set, badge)) = k.ports.get(f.port).map(|p| (p.set, p.badge)) else {
        return false;
    };
    let Some(pset) = k.port_sets.get_mut(set) else {
        return false;
    };
    pset.callers.push_back(c);
    // A keeper thread already waiting re-executes its wait and finds the fault.
    let waiting = pop_live(&mut pset.waiting);
    if let Some(t) = k.threads.get_mut(c) {
        t.pending_fault = Some((badge, f.words));
        t.state = ThreadState::IpcCallQueued(set);
    }
    if let Some(w) = waiting {
        sched::make_runnable(w);
    }
    true
}

/// Blocks the current thread so that its `syscall` is re-executed when it is resumed
/// without the operation having been completed for it.
fn block_restartable(me: ThreadId, state: ThreadState) {
    if let Some(r) = regs_of(me) {
        user_regs::restart_call(r);
    }
    if let Some(t) = kernel().threads.get_mut(me) {
        t.state = state;
    }
}

/// Makes `next` the running thread right away (the current one is blocked or queued).
fn switch_to_now(next: ThreadId) -> ! {
    hand_off(next, false)
}

/// Makes `next` the running thread right away; the current one, still runnable, goes to the
/// back of the run queue if `requeue`.
fn hand_off(next: ThreadId, requeue: bool) -> ! {
    let k = kernel();
    if let Some(t) = k.threads.get_mut(next) {
        t.state = ThreadState::Runnable;
    }
    k.queue.hand_off(next, requeue);
    // The scheduler reads the current thread from PERCPU as well.
    crate::arch::percpu::get().cur_thread.set(next.to_u64());
    // SAFETY: entry.S's schedule switches to the idle stack and never returns.
    unsafe { sched::schedule() }
}

/// Records that `server` now owes `client` a reply, and what the client waits in.
fn pair(server: ThreadId, client: ThreadId, client_state: ThreadState) {
    if let Some(t) = kernel().threads.get_mut(server) {
        t.reply_to = Some(client);
    }
    if let Some(t) = kernel().threads.get_mut(client) {
        t.state = client_state;
    }
}

/// Pops the first live thread of a queue.
fn pop_live(q: &mut VecDeque<ThreadId>) -> Option<ThreadId> {
    while let Some(t) = q.pop_front() {
        if kernel()
            .threads
            .get(t)
            .is_some_and(|th| th.state != ThreadState::Dead)
        {
            return Some(t);
        }
    }
    None
}

/// A thread waiting on `set`; if there is none, the caller is queued on the set and blocked
/// with its call in restart form, to be taken by the next server that waits (this does not
/// return then).
fn waiting_server_or_queue(me: ThreadId, set: Id) -> ThreadId {
    if let Some(w) = kernel()
        .port_sets
        .get_mut(set)
        .and_then(|s| pop_live(&mut s.waiting))
    {
        return w;
    }
    if let Some(s) = kernel().port_sets.get_mut(set) {
        s.callers.push_back(me);
    }
    block_restartable(me, ThreadState::IpcCallQueued(set));
    // SAFETY: as in switch_to_now.
    unsafe { sched::schedule() }
}

pub fn call(port_name: u64) -> Result<u64, Error> {
    let me = current()?;
    let (set, badge) = port_of(me, port_name)?;
    prefault_receive_buffer(me)?;
    let w = waiting_server_or_queue(me, set);
    deliver_or_requeue(me, w, set, badge)?;
    if let Some(t) = kernel().threads.get_mut(w) {
        t.reply_to = Some(me);
    }
    block_restartable(me, ThreadState::WaitReply(w));
    switch_to_now(w)
}

pub fn send(port_name: u64) -> Result<u64, Error> {
    let me = current()?;
    let (set, badge) = port_of(me, port_name)?;
    let Some(w) = kernel()
        .port_sets
        .get_mut(set)
        .and_then(|s| pop_live(&mut s.waiting))
    else {
        return Ok(0); // nobody listens: dropped (at most once)
    };
    deliver_or_requeue(me, w, set, badge)?;
    if let Some(t) = kernel().threads.get_mut(w) {
        t.reply_to = None;
    }
    if let Some(r) = regs_of(me) {
        r.rax = encode(Ok(1));
    }
    hand_off(w, true)
}

/// `ipc_wait`, and the waiting half of `ipc_reply_wait` (`replied_to`: the client just
/// answered, to switch to directly if no other message is pending).
pub fn wait(set_name: u64, replied_to: Option<ThreadId>) -> Result<u64, Error> {
    let me = current()?;
    let set = set_of(me, set_name)?;
    if replied_to.is_none() {
        prefault_receive_buffer(me)?; // (reply_wait did it before replying)
    }
    while let Some(c) = kernel()
        .port_sets
        .get_mut(set)
        .and_then(|s| pop_live(&mut s.callers))
    {
        if let Some((badge, words)) = kernel()
            .threads
            .get_mut(c)
            .and_then(|t| t.pending_fault.take())
        {
            deliver_fault(me, badge, words);
            pair(me, c, ThreadState::FaultWait(me));
            if let Some(r) = replied_to {
                sched::make_runnable(r);
            }
            return Ok(badge);
        }
        let badge = match kernel().threads.get(c).map(|t| t.regs.rdi) {
            Some(port_name) => port_of(c, port_name).map(|(_, b)| b),
            None => Err(Error::PeerGone),
        };
        match badge.and_then(|b| transfer(c, me, b).map(|_| b)) {
            Ok(b)
                if kernel()
                    .threads
                    .get(c)
                    .is_some_and(|t| t.regs.rax == Call::IpcSendReliable as u64) =>
            {
                // A reliable send is complete once taken: no reply.
                complete(c);
                if let Some(t) = kernel().threads.get_mut(me) {
                    t.reply_to = None;
                }
                if let Some(r) = replied_to {
                    sched::make_runnable(r);
                }
                return Ok(b);
            }
            Ok(b) => {
                pair(me, c, ThreadState::WaitReply(me));
                if let Some(r) = replied_to {
                    sched::make_runnable(r);
                }
                return Ok(b);
            }
            // The caller's data is out with its keeper: it waits for it, then re-sends.
            Err(_) if caller_to_keeper(c) => {}
            // Our own buffer is: the caller stays first in line while we fetch it.
            Err(e) if kernel().keeper_fault.is_some() => {
                if let Some(s) = kernel().port_sets.get_mut(set) {
                    s.callers.push_front(c);
                }
                return Err(e);
            }
            Err(e) => fail_caller(c, e),
        }
    }
    if let Some(s) = kernel().port_sets.get_mut(set) {
        s.waiting.push_back(me);
    }
    block_restartable(me, ThreadState::IpcWait(set));
    match replied_to {
        Some(r) => switch_to_now(r),
        // SAFETY: as in switch_to_now.
        None => unsafe { sched::schedule() },
    }
}

/// Completes a queued caller's call with an error (its port vanished, say).
fn fail_caller(c: ThreadId, e: Error) {
    if let Some(r) = regs_of(c) {
        r.rax = encode(Err(e));
        user_regs::complete_call(r);
    }
    sched::make_runnable(c);
}

pub fn reply_wait(set_name: u64) -> Result<u64, Error> {
    let me = current()?;
    set_of(me, set_name)?;
    prefault_receive_buffer(me)?;
    let client = kernel().threads.get_mut(me).and_then(|t| t.reply_to.take());
    let mut replied = None;
    if let Some(c) = client {
        let state = kernel().threads.get(c).map(|t| t.state);
        if state == Some(ThreadState::FaultWait(me)) {
            // A faulting thread: the reply only lets it re-execute the faulting access.
            if let Some(t) = kernel().threads.get_mut(c) {
                t.state = ThreadState::Runnable;
            }
            replied = Some(c);
        }
        if state == Some(ThreadState::WaitReply(me)) {
            if let Err(e) = transfer(me, c, 0) {
                // Not replied: the client still waits for this thread (which may
                // re-execute the call once its keeper brought the reply's data in).
                if let Some(t) = kernel().threads.get_mut(me) {
                    t.reply_to = Some(c);
                }
                return Err(e);
            }
            if let Some(t) = kernel().threads.get_mut(c) {
                t.state = ThreadState::Runnable;
            }
            replied = Some(c);
        }
    }
    // The reply is done: an error from here on must not lose the client.
    let r = wait(set_name, replied);
    if let (Err(_), Some(c)) = (&r, replied) {
        sched::make_runnable(c);
    }
    r
}

/// A thread is going away: take it out of every queue, and fail the call of a client it
/// was serving.
pub fn forget_thread(tid: ThreadId) {
    let k = kernel();
    for id in k.port_sets.ids() {
        if let Some(s) = k.port_sets.get_mut(id) {
            s.waiting.retain(|&t| t != tid);
            s.callers.retain(|&t| t != tid);
        }
    }
    if let Some(c) = k.threads.get_mut(tid).and_then(|t| t.reply_to.take()) {
        match k.threads.get(c).map(|t| t.state) {
            Some(ThreadState::WaitReply(s)) if s == tid => fail_caller(c, Error::PeerGone),
            // Its keeper went away: it re-executes the access (and faults again).
            Some(ThreadState::FaultWait(s)) if s == tid => sched::make_runnable(c),
            _ => {}
        }
    }
}

/// Writes a kernel-made message (a fault) into a receiving thread's registers.
fn deliver_fault(to: ThreadId, badge: u64, words: [u64; 4]) {
    let blocked = kernel()
        .threads
        .get(to)
        .is_some_and(|t| t.state != ThreadState::Runnable);
    if let Some(dst) = regs_of(to) {
        [dst.rsi, dst.rdx, dst.r10, dst.r8] = words;
        dst.r9 = NO_CAP;
        dst.r13 = 0;
        dst.r15 = 0;
        dst.rax = badge;
        if blocked {
            user_regs::complete_call(dst);
        }
    }
}

/// Sends a fault message to a keeper port on behalf of the faulting current thread, which
/// waits for the keeper's reply with its registers as they were at the fault. Returns only
/// if the port is gone (the caller then treats the fault as unhandled).
pub fn send_fault(port: Id, words: [u64; 4]) {
    let Ok(me) = current() else { return };
    let Some((set, badge)) = kernel().ports.get(port).map(|p| (p.set, p.badge)) else {
        return;
    };
    let Some(pset) = kernel().port_sets.get_mut(set) else {
        return;
    };
    match pop_live(&mut pset.waiting) {
        Some(w) => {
            deliver_fault(w, badge, words);
            pair(w, me, ThreadState::FaultWait(w));
            switch_to_now(w)
        }
        None => {
            pset.callers.push_back(me);
            if let Some(t) = kernel().threads.get_mut(me) {
                t.pending_fault = Some((badge, words));
                t.state = ThreadState::IpcCallQueued(set);
            }
            // SAFETY: as in switch_to_now.
            unsafe { sched::schedule() }
        }
    }
}

/// A port set is destroyed: every thread waiting on it or queued to it re-executes its
/// call (which now fails: the set is gone).
pub fn release_set(set: &PortSet) {
    for &t in set.waiting.iter().chain(set.callers.iter()) {
        sched::make_runnable(t);
    }
}

/// Completes a blocked sender's call with success (RIP past its `syscall`).
fn complete(c: ThreadId) {
    if let Some(r) = regs_of(c) {
        r.rax = 0;
        user_regs::complete_call(r);
    }
    sched::make_runnable(c);
}

/// `ipc_send_reliable`: delivered exactly once; waits (restartably) until taken.
pub fn send_reliable(port_name: u64) -> Result<u64, Error> {
    let me = current()?;
    let (set, badge) = port_of(me, port_name)?;
    let w = waiting_server_or_queue(me, set);
    deliver_or_requeue(me, w, set, badge)?;
    if let Some(t) = kernel().threads.get_mut(w) {
        t.reply_to = None;
    }
    if let Some(r) = regs_of(me) {
        r.rax = 0;
    }
    hand_off(w, true)
}
