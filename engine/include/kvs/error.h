/* SPDX-License-Identifier: MIT */
/*
 * kvs error codes. Every kvs function that can fail returns 0 (or a documented non-negative
 * count) on success and a negative value on failure: either -errno, or one of the kvs codes
 * below, which live at or below -4096 so that they never collide with an errno value.
 * kvs_strerror() names both kinds.
 */
#ifndef KVS_ENGINE_ERROR_H
#define KVS_ENGINE_ERROR_H

#define KVS_ECORRUPT  (-4096) /* a record failed its checksum or is malformed */
#define KVS_EPROTO    (-4097) /* a peer broke the wire protocol */
#define KVS_ENOTFOUND (-4098) /* the key does not exist */
#define KVS_ETOOBIG   (-4099) /* a key or value is over its configured limit */
#define KVS_EFAILED   (-4100) /* the store failed (e.g. fsync error) and is read-only */
#define KVS_EFORMAT   (-4101) /* unknown format version or not a kvs directory */
#define KVS_ELOCKED   (-4102) /* another process holds the store's lock */
#define KVS_ECLOSED   (-4103) /* the object is shutting down and takes no new work */

/*
 * kvs_strerror - a short, static, human-readable description of a negative error code.
 * Accepts -errno values and KVS_E* codes; any thread may call it.
 */
const char *kvs_strerror(int err);

#endif
