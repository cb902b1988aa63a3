/**
 * Rampart's AuditPolicy service: the audit policy in force (Show), putting one in force on every
 * member as one log entry (Apply), and the HMAC of a value under the cluster's audit HMAC key
 * (Hmac), so an auditor can find a known value in a trail that holds only HMACs. Root only while
 * auth is enabled; Apply and Hmac are recorded whatever the policy says (audit/policy.ts
 * `alwaysRecorded`), and never with a value.
 */
import { RampartError } from '../errors.js';
import { AuditPolicyError, auditPolicyDigest, encodeAuditPolicy, parseAuditPolicy, shippedAuditPolicy } from '../audit/policy.js';
import { auditHmacKeyOf, hmacValue, newAuditHmacKey } from '../audit/value-hmac.js';
import type { Rpc } from './rpc.js';
import type { ServiceKit } from './services.js';

export function serveAuditPolicy({ member, admin, unary }: Pick<ServiceKit, 'member' | 'admin' | 'unary'>): Record<string, Rpc> {
  return {
    Show: unary('AuditPolicyShow', async (_request: object, call) => {
      await admin(call);
      await member.readBarrier();
      const state = member.auth.state;
      const encoded = state.auditPolicy ?? shippedAuditPolicy();
      return { policy_json: encoded, digest: auditPolicyDigest(encoded), shipped_default: state.auditPolicy === undefined, hmac_key: auditHmacKeyOf(state.auditHmacKey) !== undefined };
    }),
    Apply: unary('AuditPolicyApply', async (request: { policy_json: string }, call) => {
      const caller = await admin(call);
      let encoded: string;
      try {
        // The CLI checked the file (and named file:line); this is the check every member relies on.
        encoded = encodeAuditPolicy(parseAuditPolicy('(applied audit policy)', request.policy_json));
      } catch (error) {
        if (error instanceof AuditPolicyError) throw new RampartError('InvalidArgument', 'malformed audit policy');
        throw error;
      }
      const before = member.auth.state.auditPolicy;
      await member.authChange({ op: 'auditPolicy', policy: encoded, hmacKey: newAuditHmacKey() }, caller);
      return { changed: before !== encoded, digest: auditPolicyDigest(encoded) };
    }),
    Hmac: unary('AuditHmac', async (request: { value: Buffer }, call) => {
      await admin(call);
      await member.readBarrier();
      const key = auditHmacKeyOf(member.auth.state.auditHmacKey);
      if (key === undefined) throw new RampartError('Unimplemented', 'the cluster has no audit HMAC key yet');
      return { hmac: hmacValue(key, Buffer.from(request.value)) };
    }),
  };
}
