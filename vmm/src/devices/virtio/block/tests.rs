//! The block device against virtqueues built in host memory (virtio-queue's mock rings):
//! requests of each type, the refusals, and chains a hostile driver could build.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::{Disk, DriveSpec, ID_BYTES};
use super::request::{serve, Completion, RequestError};
use super::Shared;
use crate::devices::virtio::Interrupt;

const MEM_BYTES: usize = 1 << 20;
const HEADER: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const OK: Option<u8> = Some(VIRTIO_BLK_S_OK as u8);
const IOERR: Option<u8> = Some(VIRTIO_BLK_S_IOERR as u8);

/// A drive file of `sectors` sectors, sector `i` filled with byte `i`, kept until the test
/// ends.
struct TestDisk {
    dir: std::path::PathBuf,
    disk: Disk,
}

impl TestDisk {
    fn new(name: &str, sectors: u8, readonly: bool) -> TestDisk {
        let dir = std::env::temp_dir().join(format!(
            "fluke-blk-unit-{}-{name}-{readonly}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let bytes: Vec<u8> = (0..sectors).flat_map(|i| [i; 512]).collect();
        std::fs::write(&path, bytes).unwrap();
        let disk = Disk::open(&DriveSpec { path, readonly }).unwrap();
        TestDisk { dir, disk }
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("disk.img")).unwrap()
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_BYTES)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
}

fn readable(addr: u64, len: u32) -> RawDescriptor {
    desc(addr, len, 0)
}

fn writable(addr: u64, len: u32) -> RawDescriptor {
    desc(addr, len, VRING_DESC_F_WRITE)
}

fn put_header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    mem.write_obj(request_type.to_le(), GuestAddress(HEADER))
        .unwrap();
    mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HEADER + 8))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

/// Serves one chain of `descs` (linked in order) with a bounce buffer of `bounce` bytes.
fn serve_chain(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    bounce: usize,
) -> Completion {
    let queue = MockSplitQueue::new(mem, 16);
    let chain = queue.build_desc_chain(descs).unwrap();
    serve(disk, mem, chain, &mut vec![0u8; bounce])
}

/// The usual request: header, data of `len` bytes, status.
fn simple(data_flags: u32, len: u32) -> [RawDescriptor; 3] {
    [
        readable(HEADER, 16),
        desc(DATA, len, data_flags),
        writable(STATUS, 1),
    ]
}

fn status_byte(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn a_read_copies_whole_sectors_in_bounce_sized_steps() {
    let d = TestDisk::new("read", 4, false);
    let mem = memory();
    put_header(&mem, VIRTIO_BLK_T_IN, 1);
    let done = serve_chain(&d.disk, &mem, &simple(VRING_DESC_F_WRITE, 1024), 100);
    assert_eq!((done.status, done.used_len, done.error), (OK, 1025, None));
    let mut data = vec![0u8; 1024];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data[..512].iter().all(|&b| b == 1) && data[512..].iter().all(|&b| b == 2));
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn framing_is_not_assumed() {
    // The header split over two buffers, the data over three, the status sharing the last
    // writable buffer with the data's tail.
    let d = TestDisk::new("framing", 2, false);
    let mem = memory();
    put_header(&mem, VIRTIO_BLK_T_IN, 1);
    let descs = [
        readable(HEADER, 10),
        readable(HEADER + 10, 6),
        writable(DATA, 200),
        writable(DATA + 0x1000, 300),
        writable(DATA + 0x2000, 13),
    ];
    let done = serve_chain(&d.disk, &mem, &descs, 4096);
    assert_eq!((done.status, done.used_len), (OK, 513));
    let last: u8 = mem.read_obj(GuestAddress(DATA + 0x2000 + 11)).unwrap();
    assert_eq!(last, 1, "the sector's last byte");
    let status: u8 = mem.read_obj(GuestAddress(DATA + 0x2000 + 12)).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_write_reaches_the_file_and_a_flush_succeeds() {
    let d = TestDisk::new("write", 3, false);
    let mem = memory();
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    put_header(&mem, VIRTIO_BLK_T_OUT, 2);
    let done = serve_chain(&d.disk, &mem, &simple(0, 512), 64);
    assert_eq!((done.status, done.used_len, done.error), (OK, 1, None));
    let bytes = d.contents();
    assert!(bytes[..1024].iter().all(|&b| b < 2));
    assert!(bytes[1024..].iter().all(|&b| b == 0xee));

    put_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let flush = [readable(HEADER, 16), writable(STATUS, 1)];
    let done = serve_chain(&d.disk, &mem, &flush, 64);
    assert_eq!((done.status, done.used_len), (OK, 1));
}

#[test]
fn get_id_answers_twenty_bytes() {
    let d = TestDisk::new("id", 1, true);
    let mem = memory();
    put_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let done = serve_chain(&d.disk, &mem, &simple(VRING_DESC_F_WRITE, 20), 64);
    assert_eq!((done.status, done.used_len), (OK, 21));
    let mut id = [0u8; ID_BYTES];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, d.disk.id());
}

#[test]
fn a_read_only_drive_refuses_writes_and_still_reads() {
    let d = TestDisk::new("ro", 2, true);
    let mem = memory();
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    put_header(&mem, VIRTIO_BLK_T_OUT, 0);
    let done = serve_chain(&d.disk, &mem, &simple(0, 512), 64);
    assert_eq!(
        (done.status, done.error),
        (IOERR, Some(RequestError::ReadOnly))
    );
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_IOERR as u8);
    assert!(d.contents()[..512].iter().all(|&b| b == 0));
    put_header(&mem, VIRTIO_BLK_T_IN, 1);
    let done = serve_chain(&d.disk, &mem, &simple(VRING_DESC_F_WRITE, 512), 64);
    assert_eq!(done.status, OK);
}

#[test]
fn requests_past_the_end_or_of_partial_sectors_fail() {
    let d = TestDisk::new("range", 3, false);
    let mem = memory();
    for (request_type, sector, len) in [
        (VIRTIO_BLK_T_IN, 3, 512),
        (VIRTIO_BLK_T_IN, 2, 1024),
        (VIRTIO_BLK_T_OUT, 3, 512),
        (VIRTIO_BLK_T_IN, u64::MAX, 512),
        (VIRTIO_BLK_T_IN, u64::MAX / 512 + 1, 512),
        (VIRTIO_BLK_T_OUT, 1 << 60, 512),
    ] {
        put_header(&mem, request_type, sector);
        let flags = if request_type == VIRTIO_BLK_T_IN {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        let done = serve_chain(&d.disk, &mem, &simple(flags, len), 512);
        assert_eq!(done.status, IOERR, "{request_type} at {sector}");
        assert!(
            matches!(done.error, Some(RequestError::OutOfRange { .. })),
            "{:?}",
            done.error
        );
    }
    put_header(&mem, VIRTIO_BLK_T_IN, 0);
    let done = serve_chain(&d.disk, &mem, &simple(VRING_DESC_F_WRITE, 100), 512);
    assert_eq!(
        (done.status, done.error),
        (IOERR, Some(RequestError::PartialSector(100)))
    );
    // The file is as it was.
    assert!(d
        .contents()
        .iter()
        .enumerate()
        .all(|(i, &b)| b as usize == i / 512));
}

#[test]
fn an_unknown_request_type_is_unsupported() {
    let d = TestDisk::new("unsupp", 1, false);
    let mem = memory();
    put_header(&mem, 99, 0);
    let done = serve_chain(&d.disk, &mem, &simple(VRING_DESC_F_WRITE, 512), 64);
    assert_eq!(done.status, Some(VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn malformed_chains_fail_without_a_panic() {
    let d = TestDisk::new("malformed", 2, false);
    let mem = memory();
    put_header(&mem, VIRTIO_BLK_T_IN, 0);
    let end = MEM_BYTES as u64;
    let cases: Vec<(&str, Vec<RawDescriptor>, Option<u8>)> = vec![
        ("no writable buffer", vec![readable(HEADER, 16)], None),
        (
            "a short header",
            vec![readable(HEADER, 8), writable(STATUS, 1)],
            IOERR,
        ),
        ("no header at all", vec![writable(STATUS, 1)], IOERR),
        (
            "readable after writable",
            vec![
                writable(DATA, 512),
                readable(HEADER, 16),
                writable(STATUS, 1),
            ],
            None,
        ),
        (
            "a data buffer outside guest RAM",
            vec![
                readable(HEADER, 16),
                writable(end - 16, 512),
                writable(STATUS, 1),
            ],
            None,
        ),
        (
            "a header outside guest RAM",
            vec![readable(end + 0x1000, 16), writable(STATUS, 1)],
            IOERR,
        ),
        (
            "a 4 GiB data buffer",
            vec![
                readable(HEADER, 16),
                writable(DATA, u32::MAX),
                writable(STATUS, 1),
            ],
            None,
        ),
        (
            "a data buffer wrapping the address space",
            vec![
                readable(HEADER, 16),
                writable(u64::MAX - 100, 512),
                writable(STATUS, 1),
            ],
            None,
        ),
    ];
    for (what, descs, status) in cases {
        let done = serve_chain(&d.disk, &mem, &descs, 512);
        assert_eq!(done.status, status, "{what}: {:?}", done.error);
        assert!(
            matches!(done.error, Some(RequestError::Malformed(_))),
            "{what}: {:?}",
            done.error
        );
        if status.is_none() {
            assert_eq!(done.used_len, 0, "{what}");
        }
    }
}

#[test]
fn the_queue_is_served_whole_and_the_driver_interrupted() {
    let d = TestDisk::new("queue", 2, false);
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let link = |d: RawDescriptor, next: u16| {
        let d = Descriptor::from(d);
        RawDescriptor::from(Descriptor::new(
            d.addr().0,
            d.len(),
            d.flags() | VRING_DESC_F_NEXT as u16,
            next,
        ))
    };
    put_header(&mem, VIRTIO_BLK_T_IN, 1);
    // Two chains sharing the header: a read, and one with no status byte at all.
    vq.add_desc_chains(
        &[
            link(readable(HEADER, 16), 1),
            link(writable(DATA, 512), 2),
            writable(STATUS, 1),
            readable(HEADER, 16),
        ],
        0,
    )
    .unwrap();
    let interrupt = Arc::new(Interrupt::new().unwrap());
    let shared = Shared {
        disk: d.disk.clone_for_test(),
        mem: mem.clone(),
        interrupt: Arc::clone(&interrupt),
        queue: Mutex::new(Some(vq.create_queue().unwrap())),
    };
    shared.serve_queue(&mut [0u8; 512]);
    assert_eq!(vq.used().idx().load(), 2);
    let used = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((used.id(), used.len()), (0, 513));
    let used = vq.used().ring().ref_at(1).unwrap().load();
    assert_eq!((used.id(), used.len()), (3, 0));
    assert_eq!(interrupt.status(), 1);
    assert_eq!(interrupt.irqfd().read().unwrap(), 1);
    // Nothing new: no second interrupt.
    shared.serve_queue(&mut [0u8; 512]);
    assert!(interrupt.irqfd().read().is_err());
    // Before activation (or after a reset) a notification does nothing.
    *shared.queue() = None;
    shared.serve_queue(&mut [0u8; 512]);
}
