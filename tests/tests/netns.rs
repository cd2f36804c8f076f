//! The namespaced networks of `barn_tests::netns` behave like the internet they stand for:
//! a host behind a home NAT reaches the public network, nothing on the public network
//! reaches into a home, and a cut link stops all traffic until it is healed.

use std::process::Stdio;

use barn_tests::netns::{Host, Nat, Net};

/// Whether `from` gets an answer to one ping to `ip` within a second.
fn pings(from: &Host, ip: &str) -> bool {
    from.command("busybox".as_ref())
        .args(["ping", "-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run busybox ping: {e}"))
        .success()
}

#[test]
fn homes_reach_out_through_their_nat_and_nothing_reaches_in() {
    let Some(mut net) = Net::new() else { return };
    let public = net.public_host("pub");
    let mut a = net.home("a", Nat::Masquerade);
    let mut b = net.home("b", Nat::Random);
    let ha = net.host_in(&mut a, "ha");
    let hb = net.host_in(&mut b, "hb");
    let ha2 = net.host_in(&mut a, "ha2");

    assert!(
        pings(&ha, &public.ip),
        "home A cannot reach the public host"
    );
    assert!(
        pings(&hb, &public.ip),
        "home B cannot reach the public host"
    );
    assert!(
        pings(&ha, &ha2.ip),
        "two hosts of one home cannot reach each other"
    );
    // The public host has no route into either home: the answers above came back only
    // through the routers' address translation.
    assert!(
        !pings(&public, &ha.ip),
        "the public host reached into home A"
    );
    assert!(!pings(&hb, &ha.ip), "home B reached into home A");
    assert!(
        pings(&public, &a.public_ip),
        "home A's router is not on the public network"
    );
    // Even a neighbour on the public network that routes home A's LAN through its router
    // (as anyone on that segment could) gets nothing in: the router forwards inwards only
    // what its LAN started.
    let route = std::process::Command::new("ip")
        .args([
            "-n",
            &public.ns,
            "route",
            "add",
            "10.1.0.0/24",
            "via",
            &a.public_ip,
        ])
        .status()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(route.success(), "cannot add the route into home A");
    assert!(!pings(&public, &ha.ip), "home A's router let a ping in");

    net.cut(&ha);
    assert!(!pings(&ha, &public.ip), "a cut link still carries traffic");
    assert!(
        pings(&ha2, &public.ip),
        "cutting one host cut its neighbour"
    );
    net.heal(&ha);
    // The port and the neighbour entries come back within a few seconds.
    assert!(
        (0..10).any(|_| pings(&ha, &public.ip)),
        "a healed link carries no traffic after 10 tries"
    );
}
