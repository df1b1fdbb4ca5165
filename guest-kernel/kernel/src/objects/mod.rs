//! The kernel objects and their calls, one module per object type: each has its calls
//! (decode: look everything up and check it, copying in what is needed, changing nothing;
//! then invoke: make the change, which cannot fail), its get/set state and its destroy.
//!
//! Every call takes the kernel state and the [`Caller`] from the dispatcher and returns a
//! [`Reply`]: objects name each other by id only, never switch threads (they change thread
//! states and say what runs next) and hold no borrow of a table across a call that can
//! resolve a fault or reach another object.

pub mod cap;
pub mod condition;
pub mod destroy;
pub mod device_memory;
pub mod interrupt;
pub mod ipc;
pub mod mapping;
pub mod memory;
pub mod mutex;
pub mod object;
pub mod port;
pub mod port_set;
pub mod reference;
pub mod region;
pub mod space;
pub mod state;
pub mod thread;
pub mod usermem;

pub use object::{value, CallResult, Reply};
