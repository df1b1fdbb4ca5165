//! The Space object's calls: create an empty child space, read and fill its capability
//! table, destroy it; and reading programs of the image, so a user-level parent can load
//! a child itself.

use crate::object::{ObjCap, ObjRef};
use crate::process::{self, Pid};
use crate::sched::{self, kernel};
use crate::space::Space;
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

fn space_of(pid: Pid) -> Result<&'static mut Space, Error> {
    kernel()
        .processes
        .get_mut(pid)
        .and_then(|p| p.space.as_mut())
        .ok_or(Error::BadCap)
}

/// The space a capability of the caller names, with `rights`.
fn target(name: u64, rights: Rights) -> Result<Pid, Error> {
    match space_of(sched::current_pid()?)?
        .caps
        .check(name, rights)?
        .object
    {
        ObjRef::Space(p) => space_of(p).map(|_| p),
        _ => Err(Error::WrongType),
    }
}

/// `space_create(keep, name_ptr, name_len (r10))`: returns the capability, and in `rdx`
/// the child's id for `wait`. The name (at most 32 bytes; none: "space") is what reports
/// call it.
pub fn create(keep: u64, name_ptr: u64, name_len: u64) -> Result<u64, Error> {
    let mut name = [0u8; 32];
    let len = usize::try_from(name_len).map_err(|_| Error::InvalidArgument)?;
    if len > name.len() {
        return Err(Error::InvalidArgument);
    }
    if len > 0 {
        space_of(sched::current_pid()?)?.copy_in(name_ptr, &mut name[..len])?;
    }
    let name = match core::str::from_utf8(&name[..len]) {
        Ok("") => "space",
        Ok(n) => n,
        Err(_) => return Err(Error::InvalidArgument),
    };
    let pid = process::create_space(sched::current_pid()?, keep, name)?;
    let cap = crate::thread_calls::grant_to_caller(ObjRef::Space(pid))
        .inspect_err(|_| process::destroy_space(pid))?;
    // SAFETY: single CPU; cur_regs is the calling thread's register block.
    unsafe {
        (*(crate::arch::percpu::get().cur_regs.get() as *mut crate::arch::user::UserRegs)).rdx =
            pid.to_u64()
    };
    Ok(cap)
}

pub fn cap_give(space_name: u64, name_there: u64, my_cap: u64, rights: u64) -> Result<u64, Error> {
    let pid = target(space_name, Rights::WRITE)?;
    let rights = Rights::from_bits(rights).ok_or(Error::InvalidArgument)?;
    let cap = space_of(sched::current_pid()?)?
        .caps
        .check(my_cap, Rights::GRANT)?;
    let name_there = u32::try_from(name_there).map_err(|_| Error::BadCap)?;
    let copy = ObjCap {
        object: cap.object,
        rights: cap.rights.intersect(rights),
    };
    space_of(pid)?.caps.insert_at(name_there, copy)?;
    Ok(0)
}

pub fn cap_take(space_name: u64, name_there: u64) -> Result<u64, Error> {
    let pid = target(space_name, Rights::READ)?;
    let cap = space_of(pid)?.caps.get(name_there)?;
    Ok(u64::from(
        space_of(sched::current_pid()?)?.caps.insert(cap)?,
    ))
}

/// Destroys a child space (its threads, its mappings, its memory and its children).
pub fn destroy(pid: Pid) -> Result<u64, Error> {
    if pid == sched::current_pid()? {
        return Err(Error::InvalidArgument);
    }
    process::destroy_space(pid);
    Ok(0)
}

pub fn program_read(
    name_ptr: u64,
    name_len: u64,
    offset: u64,
    buf: u64,
    len: u64,
) -> Result<u64, Error> {
    if name_len == 0 || name_len > 32 || len > 1 << 20 {
        return Err(Error::InvalidArgument);
    }
    let me = space_of(sched::current_pid()?)?;
    let mut name = [0u8; 32];
    me.copy_in(name_ptr, &mut name[..name_len as usize])?;
    let name =
        core::str::from_utf8(&name[..name_len as usize]).map_err(|_| Error::InvalidArgument)?;
    let bundle = crate::image::loaded_bundle().ok_or(Error::NoSuchProgram)?;
    let data = bundle.program(name).ok_or(Error::NoSuchProgram)?.data;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(len as usize).min(data.len());
    me.copy_out(buf, &data[start..end])?;
    Ok((end - start) as u64)
}
