// The Node.js peer of the gRPC load benchmark (benches/grpc_load): the same
// TokenService.Validate on @grpc/grpc-js, each token verified with jose against
// a local JWKS (keys imported once, as introspectd parses them once), answering
// the same fields introspectd answers (claims as a google.protobuf.Struct).
//
// Usage: node server.mjs PROTO_DIR JWKS_FILE ISSUER AUDIENCE
// Prints `listening PORT` on stdout once it serves on 127.0.0.1 (port chosen by
// the kernel), and stops on SIGTERM.

import { readFileSync } from 'node:fs';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as jose from 'jose';

const [protoDir, jwksFile, issuer, audience] = process.argv.slice(2);
if (!audience) {
  console.error('usage: node server.mjs PROTO_DIR JWKS_FILE ISSUER AUDIENCE');
  process.exit(2);
}

const def = protoLoader.loadSync('introspect/v1/introspect.proto', {
  keepCase: true, longs: Number, enums: String, defaults: false, oneofs: true, includeDirs: [protoDir],
});
const pkg = grpc.loadPackageDefinition(def);
const keys = jose.createLocalJWKSet(JSON.parse(readFileSync(jwksFile, 'utf8')));
const OPTIONS = { issuer, audience, algorithms: ['RS256', 'ES256'], clockTolerance: 60 };

function value(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(value) } };
  return { structValue: struct(v) };
}

function struct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = value(v);
  return { fields };
}

const timestamp = (secs) => (typeof secs === 'number' ? { seconds: Math.floor(secs), nanos: 0 } : undefined);

function scopes(payload) {
  const raw = payload.scp ?? payload.scope;
  if (typeof raw === 'string') return raw.split(' ').filter(Boolean);
  if (Array.isArray(raw)) return raw.filter((s) => typeof s === 'string');
  return [];
}

const CODES = {
  ERR_JWT_EXPIRED: 'ERROR_CODE_EXPIRED',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'ERROR_CODE_INVALID_SIGNATURE',
  ERR_JWKS_NO_MATCHING_KEY: 'ERROR_CODE_UNKNOWN_KEY',
};

async function validate(call, callback) {
  const raw = call.request.token ?? '';
  const token = /^bearer /i.test(raw) ? raw.slice(7).trim() : raw.trim();
  if (!token) {
    callback({ code: grpc.status.INVALID_ARGUMENT, details: 'token is empty' });
    return;
  }
  try {
    const { payload, protectedHeader } = await jose.jwtVerify(token, keys, OPTIONS);
    callback(null, {
      valid: true,
      tenant: 'bench',
      issuer: payload.iss ?? '',
      subject: payload.sub ?? '',
      audiences: [].concat(payload.aud ?? []),
      scopes: scopes(payload),
      expires_at: timestamp(payload.exp),
      issued_at: timestamp(payload.iat),
      not_before: timestamp(payload.nbf),
      key_id: protectedHeader.kid ?? '',
      algorithm: protectedHeader.alg,
      claims: struct(payload),
    });
  } catch (err) {
    const code = CODES[err.code] ?? 'ERROR_CODE_MALFORMED';
    callback(null, { valid: false, error: { code, message: String(err.code ?? 'invalid') } });
  }
}

const unimplemented = (call, callback) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'not in the benchmark peer' });
const server = new grpc.Server();
server.addService(pkg.introspect.v1.TokenService.service, {
  Validate: validate,
  Introspect: unimplemented,
  WatchKeys: (call) => call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'not in the benchmark peer' }),
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error(`bind failed: ${err.message}`);
    process.exit(1);
  }
  console.log(`listening ${port}`);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
