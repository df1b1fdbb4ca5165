//! The kernel's core state: the object tables, the run queue and the one way to reach them,
//! [`with_kernel`], which each kernel entry calls once and passes down. Nothing else holds
//! a reference to this state, so no borrow of a table can be overtaken by another.
//!
//! This layer holds the data of threads, spaces and processes (they own hardware resources:
//! register blocks, kernel stacks, page tables) and the scheduler; the calls on objects are
//! the layer above (`objects`), the kernel entries the one above that (`dispatch`).

pub mod floor;
pub mod objref;
pub mod process;
pub mod sched;
pub mod space;
pub mod state;
pub mod thread;

pub use objref::{owner_cap, ObjCap, ObjRef};
pub use state::{with_kernel, Caller, KeeperFault, Kernel};
