"""Smoke tests for the real-service fixtures in tests/services.py."""

import queue
import uuid
from pathlib import Path

import pytest

from services import close_client, dig, mqtt_client, require_binary, wait_until

pytestmark = pytest.mark.integration


def _subscribe(client, topic, qos=1):
    got: "queue.Queue" = queue.Queue()
    client.on_message = lambda c, u, msg: got.put(msg)
    subscribed = []
    client.on_subscribe = lambda c, u, mid, rcs, props: subscribed.append(mid)
    _, mid = client.subscribe(topic, qos=qos)
    wait_until(lambda: mid in subscribed, 10, message="SUBACK not received")
    return got


def test_mqtt_publish_subscribe_round_trip(mosquitto):
    topic = f"classroom/v1/test-site/room-1/dev-{uuid.uuid4().hex[:6]}/alert"
    sub = mqtt_client(mosquitto)
    pub = mqtt_client(mosquitto)
    try:
        got = _subscribe(sub, "classroom/v1/+/+/+/alert")
        pub.publish(topic, b'{"state": "raised"}', qos=1).wait_for_publish(10)
        msg = got.get(timeout=10)
        assert msg.topic == topic
        assert msg.payload == b'{"state": "raised"}'
        assert msg.qos == 1
    finally:
        close_client(sub)
        close_client(pub)
    assert mosquitto.log_path.exists()


def test_mqtt_restart_keeps_retained_message(mosquitto):
    topic = "classroom/v1/s/r/d/status"
    port = mosquitto.port
    pub = mqtt_client(mosquitto)
    pub.publish(topic, b'{"state": "online"}', qos=1, retain=True).wait_for_publish(10)
    close_client(pub)

    mosquitto.stop()
    assert not mosquitto.is_running
    mosquitto.start()
    assert mosquitto.is_running and mosquitto.port == port

    sub = mqtt_client(mosquitto)
    try:
        got = _subscribe(sub, topic)
        msg = got.get(timeout=10)
        assert msg.retain and msg.payload == b'{"state": "online"}'
    finally:
        close_client(sub)


def test_dnsmasq_answers_and_nxdomain(dnsmasq_factory):
    dns = dnsmasq_factory("address=/test.example/192.0.2.1\nlog-queries\n")
    assert dns.port not in (53, 5353)
    assert dns.query("test.example") == ("NOERROR", ["192.0.2.1"])
    assert dns.query("www.test.example") == ("NOERROR", ["192.0.2.1"])
    assert dns.query("other.example")[0] != "NOERROR"  # no upstream configured
    rcode, answers = dns.query("test.example", tcp=True)
    assert rcode == "NOERROR" and answers == ["192.0.2.1"]
    # a local-only domain gives a real NXDOMAIN
    dns.restart("address=/test.example/192.0.2.1\nlocal=/blocked.example/\nlog-queries\n")
    assert dns.query("bad.blocked.example") == ("NXDOMAIN", [])
    assert dns.query("test.example") == ("NOERROR", ["192.0.2.1"])
    wait_until(lambda: "bad.blocked.example" in dns.log_path.read_text(), 5)
    pid = dns.pid
    dns.reload()
    assert dns.query("test.example") == ("NOERROR", ["192.0.2.1"])
    assert dns.pid == pid and dns.is_running


def test_postgres_sql_round_trip(postgres, postgres_dsn):
    import psycopg

    assert "127.0.0.1" in postgres.dsn
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE t (id uuid PRIMARY KEY, v text)")
        i = uuid.uuid4()
        conn.execute("INSERT INTO t VALUES (%s, %s)", (i, "hello"))
        conn.commit()
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT id, v FROM t").fetchall() == [(i, "hello")]
    other = postgres.new_database()
    assert other != postgres_dsn
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() == (0,)


def test_netns_link_dns_and_nft(netns, dnsmasq_factory):
    import subprocess

    nft = require_binary("nft")
    device, upstream = netns(), netns()
    dev_ip, up_ip = device.link(upstream)
    assert dev_ip.startswith("198.1") and up_ip.startswith("198.1")
    # an "upstream resolver" on port 53 inside the upstream namespace only
    resolver = dnsmasq_factory(
        "address=/up.example/192.0.2.7\n", netns=upstream, listen_address=up_ip, port=53
    )
    assert dig("up.example", port=53, server=up_ip, netns=device.name) == ("NOERROR", ["192.0.2.7"])
    # nftables inside the device namespace blocks it; the host ruleset is untouched
    device.run([nft, "add table inet cs_smoke"])
    device.run([nft, "add chain inet cs_smoke out { type filter hook output priority 0 ; }"])
    device.run([nft, "add rule inet cs_smoke out udp dport 53 drop"])
    assert "cs_smoke" in device.run([nft, "list", "ruleset"]).stdout
    assert dig("up.example", port=53, server=up_ip, netns=device.name, timeout=1)[0] == "TIMEOUT"
    assert resolver.is_running
    host_rules = subprocess.run([nft, "list", "ruleset"], capture_output=True, text=True).stdout
    assert "cs_smoke" not in host_rules


def test_free_ports_are_below_the_ephemeral_range_so_no_connection_takes_one_meanwhile():
    import socket as _socket

    from services import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(1024 < p < low for p in ports), ports
    assert len(set(ports)) >= 18  # spread out: not the same few again and again
    for port in ports:
        for kind in (_socket.SOCK_STREAM, _socket.SOCK_DGRAM):
            with _socket.socket(_socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))
