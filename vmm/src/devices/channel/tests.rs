use super::*;

#[test]
fn specs_parse_and_bad_ones_say_why() {
    assert_eq!(
        ChannelSpec::parse("path=/tmp/c.sock").unwrap(),
        ChannelSpec {
            path: "/tmp/c.sock".into()
        }
    );
    for (bad, says) in [
        ("", "an empty option"),
        ("path=", "an empty path"),
        ("path", "an empty path"),
        ("/tmp/c.sock", "unknown option \"/tmp/c.sock\""),
        ("path=/a,path=/b", "path given twice"),
        ("path=/a,size=2M", "unknown option \"size\""),
        ("path=/a,", "an empty option"),
    ] {
        let e = ChannelSpec::parse(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
        assert!(e.contains("(expected path=SOCKET)"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
    let twice = ChannelSpec::parse_all(&["path=/a".into(), "path=/b".into(), "path=/a".into()])
        .unwrap_err()
        .to_string();
    assert!(twice.contains("--channel /a: given twice"), "{twice}");
    assert_eq!(
        ChannelSpec::parse_all(&["path=/a".into(), "path=/b".into()])
            .unwrap()
            .len(),
        2
    );
}

fn registers(role: u32, peer: u32) -> (Registers, Arc<State>, EventFd, EventFd) {
    let line = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let doorbell = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let state = Arc::new(State {
        role,
        peer: AtomicU32::new(peer),
        status: AtomicU32::new(0),
        line: line.try_clone().unwrap(),
    });
    let regs = Registers {
        state: Arc::clone(&state),
        doorbell: doorbell.try_clone().unwrap(),
        warnings: GuestWarnings::default(),
    };
    (regs, state, line, doorbell)
}

fn read(r: &mut Registers, offset: u64) -> u32 {
    let mut b = [0xffu8; 4];
    r.read(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn the_register_page_reads_as_the_contract_says() {
    let (mut r, state, line, doorbell) = registers(ROLE_CONNECTOR, PEER_CONNECTED);
    assert_eq!(read(&mut r, REG_MAGIC), u32::from_le_bytes(*b"FLCH"));
    assert_eq!(read(&mut r, REG_VERSION), VERSION);
    assert_eq!(read(&mut r, REG_SHARED_SIZE), 0xff000);
    assert_eq!(read(&mut r, REG_ROLE), 1);
    assert_eq!(read(&mut r, REG_PEER), PEER_CONNECTED);
    assert_eq!(read(&mut r, REG_INTERRUPT_STATUS), 0);
    // Write-only, unknown and narrow reads read as zero.
    assert_eq!(read(&mut r, REG_DOORBELL), 0);
    assert_eq!(read(&mut r, REG_INTERRUPT_ACK), 0);
    assert_eq!(read(&mut r, 0x800), 0);
    let mut narrow = [0xffu8; 2];
    r.read(REG_MAGIC, &mut narrow);
    assert_eq!(narrow, [0, 0]);

    // The other VM goes: the status bit, PEER, and the line raised once.
    state.set_peer(PEER_GONE);
    assert_eq!(read(&mut r, REG_PEER), PEER_GONE);
    assert_eq!(read(&mut r, REG_INTERRUPT_STATUS), INT_PEER_CHANGED);
    assert_eq!(line.read().unwrap(), 1);
    // Acknowledged; writes elsewhere change nothing.
    r.write(REG_PEER, &7u32.to_le_bytes());
    r.write(REG_INTERRUPT_ACK, &[1]);
    assert_eq!(read(&mut r, REG_INTERRUPT_STATUS), INT_PEER_CHANGED);
    r.write(REG_INTERRUPT_ACK, &INT_PEER_CHANGED.to_le_bytes());
    assert_eq!(read(&mut r, REG_INTERRUPT_STATUS), 0);
    assert_eq!(read(&mut r, REG_PEER), PEER_GONE);
    // A doorbell that reaches the VMM is passed on to the other VM's eventfd.
    assert!(doorbell.read().is_err(), "nothing rung yet");
    r.write(REG_DOORBELL, &1u32.to_le_bytes());
    assert_eq!(doorbell.read().unwrap(), 1);
}
