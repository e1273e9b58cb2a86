#!/usr/bin/python3
# Origin: copied from the verified recipe shared/services/keystone-setup.py into
# Flotilla's deploy/services/; start-swift.sh runs it (from its own directory)
# when SWIFT_KEYSTONE=1. See README.md.
#
"""Idempotently create the Keystone objects the Swift proxy needs.

Run with Debian's python3 (python3-keystoneclient). Arguments:
  KEYSTONE_V3_URL SWIFT_ENDPOINT_URL
Creates projects 'service' and 'test', users 'swift' (admin in 'service',
used by the proxy's authtoken middleware) and 'tester' / 'testing' (member
of 'test'), and the object-store service with its endpoints.
"""
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client

url, swift_url = sys.argv[1], sys.argv[2]
auth = v3.Password(auth_url=url, username="admin", password="admin",
                   project_name="admin", user_domain_id="default",
                   project_domain_id="default")
ks = client.Client(session=session.Session(auth=auth))
roles = {r.name: r for r in ks.roles.list()}


def project(name):
    found = ks.projects.list(name=name)
    return found[0] if found else ks.projects.create(name=name, domain="default")


def user(name, password, proj, role):
    found = ks.users.list(name=name)
    u = found[0] if found else ks.users.create(
        name=name, password=password, domain="default", default_project=proj)
    ks.roles.grant(roles[role], user=u, project=proj)
    return u


service = project("service")
test = project("test")
user("swift", "swiftpass", service, "admin")
user("tester", "testing", test, "member")
found = ks.services.list(name="swift")
svc = found[0] if found else ks.services.create(name="swift", type="object-store")
have = {e.interface for e in ks.endpoints.list(service=svc)}
for iface in ("public", "internal", "admin"):
    if iface not in have:
        ks.endpoints.create(service=svc, url=swift_url, interface=iface, region="RegionOne")
print(f"keystone ready: project test id {test.id}")
