//! Interrupts (issue 15): an interrupt line bound to a port. Each interrupt of the line
//! arrives on the port as a message `[fault::INTERRUPT, line, count, 0]` with the port's
//! badge; the line is masked in the IOAPIC from the moment it fires until the driver calls
//! `irq_ack`, so a driver has one interrupt at a time. A message that finds no thread
//! waiting on the port's set is kept (the line is masked meanwhile) and taken by the next
//! `ipc_wait` there. The kernel makes one object per line it hands out, at boot, for the
//! first process (`fluke_abi::devices`); no call creates one.
//!
//! A line is bound to at most one port: `irq_bind` on a bound line fails with `Busy`
//! (`obj_set_state` can re-point or unbind it, as a checkpointer restoring it does). When
//! the port goes (destroyed, or its space ended: a driver killed mid-interrupt), the line
//! is unbound and stays masked; an interrupt not yet acknowledged is sent again to the
//! next port bound, so it is not lost. Destroying the object masks the line for good.
//! The state machine is `fluke_kcore::irq` (host-tested); this module does what it says
//! to the IOAPIC (`arch::ioapic`) and to the port set's waiters (`ipc`).

use super::object::{name_of, CallResult, Reply};
use crate::arch::{apic, ioapic};
use crate::kernel::sched::{self, Next};
use crate::kernel::thread::{ThreadId, ThreadState};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::{fault, Error};
use fluke_kcore::cap::Rights;
use fluke_kcore::ipc::Delivery;
use fluke_kcore::irq::Line;
use fluke_kcore::slab::Id;

/// The interrupt object the kernel makes at boot for `line` (routed, masked).
pub fn make(k: &mut Kernel, line: u32) -> Option<Id> {
    let slot = k.irq_of_line.get_mut(line as usize)?;
    if slot.is_some() {
        return None;
    }
    let id = k.irqs.insert(Line::new(line))?;
    k.irq_of_line[line as usize] = Some(id);
    ioapic::route(line);
    Some(id)
}

fn irq_cap(k: &mut Kernel, c: Caller, name: u64) -> Result<Id, Error> {
    match k.lookup(c, name, Rights::USE)?.object {
        ObjRef::Interrupt(i) if k.irqs.get(i).is_some() => Ok(i),
        ObjRef::Interrupt(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// A port argument (USE: interrupts are sent on it).
fn port_cap(k: &mut Kernel, c: Caller, name: u64) -> Result<Id, Error> {
    match k.lookup(c, name, Rights::USE)?.object {
        ObjRef::Port(p) if k.ports.get(p).is_some() => Ok(p),
        ObjRef::Port(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// Makes the IOAPIC's mask what the line's state says.
fn apply_mask(line: &Line<Id>) {
    if line.masked() {
        ioapic::mask(line.line);
    } else {
        ioapic::unmask(line.line);
    }
}

/// `irq_bind(irq, port)`.
pub fn bind(k: &mut Kernel, c: Caller, name: u64, port_name: u64) -> CallResult {
    let i = irq_cap(k, c, name)?;
    let port = port_cap(k, c, port_name)?;
    k.irqs.get(i).ok_or(Error::BadCap)?.check_bind()?;
    rebind(k, i, port);
    Ok(Reply::Value(0))
}

/// Binds (or re-points) the line: cannot fail.
fn rebind(k: &mut Kernel, i: Id, port: Id) {
    if let Some(line) = k.irqs.get_mut(i) {
        line.bind(port);
        apply_mask(line);
    }
    let _ = send_queued(k, i);
}

/// `irq_ack(irq)`: unmasks the line.
pub fn ack(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let i = irq_cap(k, c, name)?;
    let line = k.irqs.get_mut(i).ok_or(Error::BadCap)?;
    line.check_ack()?;
    line.ack();
    apply_mask(line);
    let n = line.line;
    crate::console::line_acknowledged(n);
    Ok(Reply::Value(0))
}

/// The interrupt of IOAPIC line `line` fired (vector `ioapic::VECTOR_BASE + line`), in user
/// mode (`from_user`: the interrupted thread yields to the driver) or in the kernel.
pub fn arrive(k: &mut Kernel, line: u32, from_user: bool) -> Next {
    // Masked first, whatever follows: a line nobody has stays quiet.
    ioapic::mask(line);
    apic::eoi();
    let Some(i) = k.irq_of_line.get(line as usize).copied().flatten() else {
        return Next::Resume;
    };
    let news = k.irqs.get_mut(i).is_some_and(|l| l.arrive());
    if !news {
        // Spurious (or latched while masked): the state says masked, and so is the line.
        return Next::Resume;
    }
    match send_queued(k, i) {
        Some(_) if from_user => Next::Yield,
        _ => Next::Resume,
    }
}

/// Sends the line's queued message to a thread waiting on its port's set, if one waits:
/// that thread (now runnable).
fn send_queued(k: &mut Kernel, i: Id) -> Option<ThreadId> {
    let line = *k.irqs.get(i)?;
    let (port, count) = line.to_send()?;
    let p = *k.ports.get(port)?;
    let words = [fault::INTERRUPT, u64::from(line.line), count, 0];
    let to = kernel_message(k, p.set, p.badge, words)?;
    if let Some(l) = k.irqs.get_mut(i) {
        l.taken();
    }
    Some(to)
}

/// Delivers a message the kernel makes for a thread waiting on `set` (the first live one),
/// which is made runnable; a reply it owes stays owed (an interrupt is not a call: a
/// driver takes a client's call, waits for its device's interrupt, then replies); `None` (nothing changed) if none waits.
/// (`ipc` takes queued interrupts from here when a thread waits: this module does not call
/// into `ipc`.)
fn kernel_message(k: &mut Kernel, set: Id, badge: u64, words: [u64; 4]) -> Option<ThreadId> {
    let threads = &k.threads;
    let alive = |t: ThreadId| {
        threads
            .get(t)
            .is_some_and(|th| th.state != ThreadState::Dead)
    };
    let w = k.port_sets.get_mut(set)?.pop_server(alive)?;
    let thread = k.threads.get_mut(w)?;
    let blocked = !thread.runnable();
    Delivery::fault(badge, words).write(&mut thread.regs, blocked);
    sched::make_runnable(k, w);
    Some(w)
}

/// A thread waits on `set` (`ipc_wait`): the message of a line queued for one of the set's
/// ports, if there is one, taken now: `(badge, words)`.
pub fn take_for_set(k: &mut Kernel, set: Id) -> Option<(u64, [u64; 4])> {
    if k.irqs.is_empty() {
        return None;
    }
    for i in k.irq_of_line.into_iter().flatten() {
        let Some(line) = k.irqs.get(i).copied() else {
            continue;
        };
        let Some((port, count)) = line.to_send() else {
            continue;
        };
        match k.ports.get(port) {
            Some(p) if p.set == set => {
                let badge = p.badge;
                if let Some(l) = k.irqs.get_mut(i) {
                    l.taken();
                }
                return Some((badge, [fault::INTERRUPT, u64::from(line.line), count, 0]));
            }
            _ => {}
        }
    }
    None
}

/// Port `port` is being destroyed: lines bound to it are unbound (and masked).
pub fn port_gone(k: &mut Kernel, port: Id) {
    if k.irqs.is_empty() {
        return;
    }
    for i in k.irq_of_line.into_iter().flatten() {
        if let Some(line) = k.irqs.get_mut(i) {
            if line.port == Some(port) {
                line.unbind();
                apply_mask(line);
            }
        }
    }
}

pub fn state(k: &Kernel, c: Caller, i: Id) -> Result<[u64; WORDS], Error> {
    let line = k.irqs.get(i).ok_or(Error::BadCap)?;
    let port = line.port.map_or(NO_CAP, |p| name_of(k, c, ObjRef::Port(p)));
    let flags = if line.outstanding {
        objstate::INTERRUPT_OUTSTANDING
    } else {
        0
    } | if line.queued {
        objstate::INTERRUPT_QUEUED
    } else {
        0
    };
    Ok([
        objstate::INTERRUPT,
        u64::from(line.line),
        port,
        flags,
        line.count,
        0,
    ])
}

/// `[INTERRUPT, line, port or NO_CAP, ..]`: binds the line to the port (re-pointing it if
/// bound) or unbinds it; the line is the object's own, the rest is not settable.
pub fn set_state(k: &mut Kernel, c: Caller, i: Id, w: &[u64; WORDS]) -> Result<(), Error> {
    let line = k.irqs.get(i).ok_or(Error::BadCap)?.line;
    if w[0] != objstate::INTERRUPT || w[1] != u64::from(line) {
        return Err(Error::InvalidArgument);
    }
    match w[2] {
        NO_CAP => {
            if let Some(l) = k.irqs.get_mut(i) {
                l.unbind();
                apply_mask(l);
            }
        }
        name => {
            let port = port_cap(k, c, name)?;
            rebind(k, i, port);
        }
    }
    Ok(())
}

/// The line is masked for good (no object for it is made again in this boot).
pub fn destroy(k: &mut Kernel, i: Id) -> Result<(), Error> {
    let line = k.irqs.remove(i).ok_or(Error::BadCap)?;
    ioapic::mask(line.line);
    if let Some(slot) = k.irq_of_line.get_mut(line.line as usize) {
        *slot = None;
    }
    Ok(())
}
