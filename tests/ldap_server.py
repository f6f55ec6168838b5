"""A real OpenLDAP server (Debian's slapd) for the account-source tests: its own slapd.conf and
database in a temporary directory, a test tree loaded with slapadd, on a port of its own on
loopback, stopped by its PID."""

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import helpers

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "admin-secret"
PEOPLE = f"ou=people,{SUFFIX}"


def slapd_binary() -> str:
    for candidate in [shutil.which("slapd"), "/usr/sbin/slapd"]:
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError("slapd not found (the test command installs Debian's slapd)")


def person(uid: str, password: str, home: str = ".", perm: str | None = None,
           extra: dict | None = None) -> str:
    """An inetOrgPerson + posixAccount entry: homeDirectory holds the home, employeeType the
    perm, and `extra` more attributes (departmentNumber for a rate, description for a flag)."""
    lines = [f"dn: uid={uid},{PEOPLE}", "objectClass: inetOrgPerson", "objectClass: posixAccount",
             f"uid: {uid}", f"cn: {uid}", f"sn: {uid}", f"userPassword: {password}",
             "uidNumber: 1000", "gidNumber: 1000", f"homeDirectory: {home}"]
    if perm:
        lines.append(f"employeeType: {perm}")
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines) + "\n"


class Slapd:
    def __init__(self, directory: Path, entries: list[str], tls: dict | None = None):
        """`tls`: {"cert": PEM, "key": PEM} also serves StartTLS and an ldaps:// port."""
        self.dir = directory
        self.port = helpers.free_port()
        self.tls_port = helpers.free_port() if tls else None
        tls_lines = (f"TLSCertificateFile {tls['cert']}\nTLSCertificateKeyFile {tls['key']}\n"
                     if tls else "")
        self.conf = directory / "slapd.conf"
        db = directory / "db"
        db.mkdir(parents=True)
        self.conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {directory}/slapd.pid
{tls_lines}
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PW}
directory {db}
access to attrs=userPassword by anonymous auth by self read by * none
access to * by * read
""")
        base = (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
                f"o: example\n\ndn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n")
        ldif = directory / "tree.ldif"
        ldif.write_text(base + "\n".join(entries))
        r = subprocess.run(["slapadd", "-f", str(self.conf), "-l", str(ldif)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        self.log = open(directory / "slapd.log", "wb")
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def start(self):
        urls = f"{self.url}/" + (f" {self.tls_url}/" if self.tls_port else "")
        self.proc = subprocess.Popen(
            [slapd_binary(), "-d", "0", "-f", str(self.conf), "-h", urls],
            stdout=self.log, stderr=self.log, preexec_fn=helpers.die_with_parent)
        def listening():
            assert self.proc.poll() is None, (self.dir / "slapd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return None

        assert helpers.poll_until(listening, 20), "slapd did not listen within 20 s"

    def stop(self):
        if self.proc:
            helpers.stop_process(self.proc, 10)
        self.proc = None

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.resume()
        self.stop()
        self.log.close()
