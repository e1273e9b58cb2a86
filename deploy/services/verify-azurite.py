#!/usr/bin/env python3
# Origin: copied from the verified recipe shared/services/verify-azurite.py into
# Flotilla's deploy/services/; run through verify-azurite.sh. See README.md.
#
"""End-to-end check of the Azurite blob service with the real Azure SDK.

Needs `pip install azure-storage-blob`. Reads AZURE_STORAGE_CONNECTION_STRING
(defaults to the well-known devstoreaccount1 string on 127.0.0.1:10000).
Exits non-zero on the first failure.
"""
import datetime
import hashlib
import os
import sys
import uuid

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (BlobServiceClient, ContainerClient,
                                ContainerSasPermissions, generate_container_sas)

ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
       "K1SZFPTOtr/KBHBeksoGMGw==")
ENDPOINT = os.environ.get("AZURITE_BLOB_ENDPOINT",
                          "http://127.0.0.1:10000/devstoreaccount1")
CONN = os.environ.get(
    "AZURE_STORAGE_CONNECTION_STRING",
    f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
    f"BlobEndpoint={ENDPOINT};")
SIZE_MB = int(os.environ.get("VERIFY_SIZE_MB", "50"))


def step(msg):
    print(f"[verify-azurite] {msg}", flush=True)


def main():
    svc = BlobServiceClient.from_connection_string(
        CONN, max_block_size=4 * 1024 * 1024, max_single_put_size=4 * 1024 * 1024)
    name = f"verify-{uuid.uuid4().hex[:12]}"
    cont = svc.create_container(name)
    step(f"created container {name}")
    try:
        data = os.urandom(SIZE_MB * 1024 * 1024)
        want = hashlib.sha256(data).hexdigest()
        blob = cont.get_blob_client("dir/big.bin")
        blob.upload_blob(data, max_concurrency=4)
        blocks = blob.get_block_list("committed")[0]
        assert len(blocks) > 1, f"expected a block upload, got {len(blocks)} block(s)"
        step(f"uploaded {SIZE_MB} MiB in {len(blocks)} blocks")
        names = [b.name for b in cont.list_blobs(name_starts_with="dir/")]
        assert names == ["dir/big.bin"], names
        step(f"listed: {names}")
        got = blob.download_blob(max_concurrency=4).readall()
        assert hashlib.sha256(got).hexdigest() == want, "downloaded data differs"
        step("downloaded and compared: identical")

        # Container SAS: create + write (+ read, list), no delete.
        sas = generate_container_sas(
            ACCOUNT, name, account_key=KEY,
            permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
        sas_cont = ContainerClient.from_container_url(f"{ENDPOINT}/{name}?{sas}")
        sas_cont.upload_blob("sas/small.txt", b"hello via sas")
        assert sas_cont.download_blob("sas/small.txt").readall() == b"hello via sas"
        step("SAS (racw): upload + download ok")
        try:
            sas_cont.delete_blob("sas/small.txt")
        except HttpResponseError as e:
            assert e.status_code == 403, e
            step(f"SAS without delete permission: delete refused ({e.status_code} {e.error_code})")
        else:
            raise AssertionError("delete with a SAS lacking 'd' permission succeeded")
        assert cont.get_blob_client("sas/small.txt").exists(), "blob vanished"

        blob.delete_blob()
        assert not blob.exists()
        step("deleted big blob with account key")
    finally:
        svc.delete_container(name)
        step(f"deleted container {name}")
    step("OK")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001
        print(f"[verify-azurite] FAILED: {exc!r}", file=sys.stderr)
        sys.exit(1)
