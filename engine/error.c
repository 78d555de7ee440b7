/* SPDX-License-Identifier: MIT */
/* kvs_strerror: names for -errno values and for the kvs codes of kvs/error.h. */
#include "kvs/error.h"

#include <string.h>

const char *kvs_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case KVS_ECORRUPT:
        return "corrupt record (checksum mismatch)";
    case KVS_EPROTO:
        return "protocol error";
    case KVS_ENOTFOUND:
        return "key not found";
    case KVS_ETOOBIG:
        return "key or value too large";
    case KVS_EFAILED:
        return "store failed after an I/O error and is read-only";
    case KVS_EFORMAT:
        return "unknown data format";
    case KVS_ELOCKED:
        return "store is locked by another process";
    case KVS_ECLOSED:
        return "shutting down";
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err); /* glibc's strerror returns static, thread-safe strings */
    return "unknown error";
}
