//! Kernel objects as capabilities name them.

use fluke_kcore::cap::{Cap, Rights};
use fluke_kcore::slab::Id;

/// A kernel object as a capability names it: the object's type and its generation-checked
/// id in that type's table, so a capability to a destroyed object can never reach a new
/// one that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjRef {
    Port(Id),
    PortSet(Id),
    Thread(Id),
    /// A space (a process's address space and capability table), by process id.
    Space(Id),
    Mutex(Id),
    Condition(Id),
    Region(Id),
    Mapping(Id),
    Reference(Id),
    /// A window of device memory (`objects::device_memory`), made at boot.
    DeviceMemory(Id),
    /// An interrupt line (`objects::interrupt`), made at boot.
    Interrupt(Id),
    /// The benchmark capability (`fluke_abi::syscall::INIT_BENCH_CAP`): no object behind
    /// it, only the right to the floor operations of `bench`.
    Bench,
}

pub type ObjCap = Cap<ObjRef>;

/// Capability-table size of a space.
pub const CAPS_PER_SPACE: usize = 256;
const _: () = assert!(fluke_abi::syscall::INIT_BENCH_CAP as usize == CAPS_PER_SPACE - 1);

/// A fresh capability with every right, for the creator of an object.
pub fn owner_cap(object: ObjRef) -> ObjCap {
    Cap {
        object,
        rights: Rights::ALL,
    }
}
