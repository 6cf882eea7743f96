// A real OpenID Connect provider for the interop suite: oidc-provider (OpenID
// Certified), on loopback, plain http.
//
// One process serves two issuers on two ports:
//   main      client credentials with resource indicators: RFC 9068 at+jwt access
//             tokens signed RS256 or ES256 (one resource each), short-lived JWTs,
//             JWTs for a resource introspectd does not accept, opaque tokens for a
//             second resource, RFC 7662 introspection and RFC 7009 revocation.
//   rotating  the same, RS256 only, whose signing keys the suite rotates while a
//             client validates continuously.
//
// Rotation needs a provider whose keystore changes: oidc-provider fixes its keys
// when constructed, so each issuer's HTTP server keeps listening and its handler
// is swapped for a Provider built with the new keys. Tokens survive the swap
// (oidc-provider's memory adapter is module-wide).
//
// Test-only control endpoints, under /__admin/ on each port:
//   POST /__admin/rotate?step=rotate   new key published and signing, old kept
//   POST /__admin/rotate?step=retire   old key removed
//   GET  /__admin/stats                requests seen, by path
//
// Usage: node idp.mjs READY_FILE
// Writes {"main": {"port", "issuer", ...}, "rotating": {...}} to READY_FILE
// once both issuers listen.

import { writeFileSync, renameSync } from 'node:fs';
import { createServer } from 'node:http';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const readyFile = process.argv[2];
if (!readyFile) {
  console.error('usage: node idp.mjs READY_FILE');
  process.exit(2);
}

export const CLIENTS = {
  app: { id: 'interop-app', secret: 'app-secret-3f1c9a' },
  // The secret holds characters that RFC 6749 2.3.1 requires to be
  // form-urlencoded inside HTTP Basic: a client that skips that step fails here.
  introspectd: { id: 'introspectd', secret: 'intro spect/d+sec:ret&=%' },
};

async function signingKey(alg, kid) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid, alg, use: 'sig' };
}

function resourceServers(name) {
  const jwt = (alg, extra = {}) => ({
    scope: 'api:read api:write',
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg } },
    ...extra,
  });
  if (name === 'rotating') {
    return { 'https://rot.api.test': jwt('RS256') };
  }
  return {
    'https://rs256.api.test': jwt('RS256'),
    'https://es256.api.test': jwt('ES256'),
    // Expires two seconds after issue: the suite waits it out.
    'https://short.api.test': jwt('RS256', { accessTokenTTL: 2 }),
    // Valid tokens of this provider, for an audience introspectd's tenant does not list.
    'https://other.api.test': jwt('RS256'),
    'https://opaque.api.test': {
      scope: 'api:read api:write',
      accessTokenFormat: 'opaque',
      accessTokenTTL: 600,
    },
  };
}

function buildProvider(issuer, name, keys) {
  const resources = resourceServers(name);
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENTS.app.id,
        client_secret: CLIENTS.app.secret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        scope: 'api:read api:write',
      },
      {
        client_id: CLIENTS.introspectd.id,
        client_secret: CLIENTS.introspectd.secret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks: { keys },
    scopes: ['api:read', 'api:write'],
    ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 600 },
    cookies: { keys: ['interop-cookie-key-not-a-secret'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // introspectd (a resource server) may introspect every token; a client only its own.
      introspection: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) => client.clientId === CLIENTS.introspectd.id
          || client.clientId === token.clientId,
      },
      // A client revokes only its own tokens.
      revocation: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) => client.clientId === token.clientId,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          const info = resources[indicator];
          if (!info) throw new errors.InvalidTarget();
          return info;
        },
      },
    },
  });
  provider.on('server_error', (ctx, err) => console.error(`[${name}] server_error`, err));
  return provider;
}

async function startIssuer(name, initialKeys) {
  const stats = {};
  let keys = initialKeys;
  // Kids are numbered by rotation, so a second rotation never reuses a retired kid.
  let rotations = 0;
  let callback;
  const server = createServer((req, res) => {
    const path = req.url.split('?')[0];
    stats[path] = (stats[path] || 0) + 1;
    if (path.startsWith('/__admin/')) {
      admin(req, res, path).catch((err) => {
        res.writeHead(500).end(String(err));
      });
      return;
    }
    callback(req, res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  callback = buildProvider(issuer, name, keys).callback();

  async function admin(req, res, path) {
    const url = new URL(req.url, issuer);
    if (path === '/__admin/stats' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
    } else if (path === '/__admin/rotate' && req.method === 'POST') {
      const step = url.searchParams.get('step');
      const rsa = keys.filter((k) => k.kty === 'RSA');
      const others = keys.filter((k) => k.kty !== 'RSA');
      if (step === 'rotate') {
        // oidc-provider signs with the first key that fits the algorithm.
        rotations += 1;
        const next = await signingKey('RS256', `${name}-rsa-${rotations + 1}`);
        keys = [next, ...rsa, ...others];
      } else if (step === 'retire') {
        keys = [rsa[0], ...others];
      } else {
        res.writeHead(400).end('unknown step');
        return;
      }
      callback = buildProvider(issuer, name, keys).callback();
      const kids = keys.map((k) => k.kid);
      console.error(`[${name}] ${step}: keys now ${kids.join(', ')}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kids }));
    } else {
      res.writeHead(404).end();
    }
  }

  return {
    server,
    info: {
      port,
      issuer,
      token_endpoint: `${issuer}/token`,
      introspection_endpoint: `${issuer}/token/introspection`,
      revocation_endpoint: `${issuer}/token/revocation`,
      jwks_uri: `${issuer}/jwks`,
      kids: keys.map((k) => k.kid),
      clients: CLIENTS,
      resources: Object.fromEntries(
        Object.entries(resourceServers(name)).map(([r, i]) => [r, {
          format: i.accessTokenFormat,
          alg: i.jwt?.sign?.alg,
          ttl: i.accessTokenTTL,
        }]),
      ),
    },
  };
}

const main = await startIssuer('main', [
  await signingKey('RS256', 'main-rsa-1'),
  await signingKey('ES256', 'main-ec-1'),
]);
const rotating = await startIssuer('rotating', [await signingKey('RS256', 'rotating-rsa-1')]);

writeFileSync(`${readyFile}.tmp`, JSON.stringify({ main: main.info, rotating: rotating.info }, null, 2));
renameSync(`${readyFile}.tmp`, readyFile);
console.error(`idp ready: main ${main.info.issuer}, rotating ${rotating.info.issuer}`);

function stop() {
  main.server.close();
  rotating.server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
