#!/usr/bin/env python3
"""Mints a development JWT (HS256, secret from RUNCAST_JWT_SECRET) with the claims Runcast reads:
sub, tenant, roles, exp. Standard library only. For development: production tokens come from
your identity provider."""
import argparse, base64, hashlib, hmac, json, os, time

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--tenant", default="dev")
parser.add_argument("--roles", default="admin", help="comma list of viewer, submitter, agent, admin")
parser.add_argument("--sub", default="dev")
parser.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
args = parser.parse_args()

secret = os.environ.get("RUNCAST_JWT_SECRET", "dev-secret-change-me").encode()
header = {"alg": "HS256", "typ": "JWT"}
claims = {"sub": args.sub, "tenant": args.tenant, "roles": args.roles.split(","), "exp": int(time.time()) + args.ttl}
signing_input = f"{b64(json.dumps(header, separators=(',', ':')).encode())}.{b64(json.dumps(claims, separators=(',', ':')).encode())}"
signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
print(f"{signing_input}.{b64(signature)}")
