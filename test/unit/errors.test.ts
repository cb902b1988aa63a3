import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { errorTable, toServiceError } from '../../src/api/errors.js';
import { RampartError, errorCodes } from '../../src/errors.js';

describe('error table', () => {
  it('maps every domain error to an etcd message and a gRPC code', () => {
    for (const code of errorCodes) {
      const mapping = errorTable[code];
      expect(mapping, code).toBeDefined();
      // etcd's text, or (for the two refusals etcd does not make) Rampart's own.
      expect(/^(etcdserver|rampart|election): /.test(mapping.message), code).toBe(true);
      expect(mapping.code, code).not.toBe(status.OK);
    }
    expect(Object.keys(errorTable).sort()).toEqual([...errorCodes].sort());
    const messages = Object.values(errorTable).map((mapping) => mapping.message);
    expect(new Set(messages).size).toBe(messages.length);
  });

  it('carries the exact strings etcd clients match on', () => {
    expect(toServiceError(new RampartError('Compacted'))).toMatchObject({ code: status.OUT_OF_RANGE, details: 'etcdserver: mvcc: required revision has been compacted' });
    expect(toServiceError(new RampartError('NoSpace'))).toMatchObject({ code: status.RESOURCE_EXHAUSTED, details: 'etcdserver: mvcc: database space exceeded' });
    expect(toServiceError(new RampartError('LeaseNotFound'))).toMatchObject({ code: status.NOT_FOUND, details: 'etcdserver: requested lease not found' });
    expect(toServiceError(new RampartError('PermissionDenied'))).toMatchObject({ code: status.PERMISSION_DENIED, details: 'etcdserver: permission denied' });
    expect(toServiceError(new RampartError('InvalidAuthToken'))).toMatchObject({ code: status.UNAUTHENTICATED, details: 'etcdserver: invalid auth token' });
    expect(toServiceError(new RampartError('RootRoleNotExist'))).toMatchObject({ code: status.FAILED_PRECONDITION, details: 'etcdserver: root user does not have root role' });
  });

  it('never leaks an unexpected error to the client', () => {
    const mapped = toServiceError(new Error('secret /path/to/file at line 12'));
    expect(mapped).toMatchObject({ code: status.INTERNAL, details: 'etcdserver: internal error' });
  });
});
