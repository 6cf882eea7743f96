// Validate a bearer token with introspectd from Node.js.
//
//   npm install        (in this folder: @grpc/grpc-js, @grpc/proto-loader)
//   INTROSPECTD_ADDR=localhost:50051 node validate.js "$TOKEN"
//
// The proto is read from the repository's proto/ folder at run time
// (INTROSPECTD_PROTO_DIR to load it from elsewhere). Prints one line and exits
// 0 for a valid token, 1 for an invalid one.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const token = process.argv[2];
if (!token) {
  console.error('usage: node validate.js TOKEN');
  process.exit(2);
}

const definition = protoLoader.loadSync('introspect/v1/introspect.proto', {
  includeDirs: [process.env.INTROSPECTD_PROTO_DIR || path.join(__dirname, '..', '..', 'proto')],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
});
const { TokenService } = grpc.loadPackageDefinition(definition).introspect.v1;
const client = new TokenService(
  process.env.INTROSPECTD_ADDR || 'localhost:50051',
  grpc.credentials.createInsecure(),
);

// An invalid token is an answer (valid=false), not an RPC error.
client.Validate({ token }, { deadline: Date.now() + 5000 }, (err, resp) => {
  client.close();
  if (err) {
    console.error(`introspectd: ${err.message}`);
    process.exit(2);
  }
  if (resp.valid) {
    console.log(`valid: tenant=${resp.tenant} subject=${resp.subject} scopes=${resp.scopes.join(' ')}`);
    process.exit(0);
  }
  console.log(`invalid: ${resp.error.code}: ${resp.error.message}`);
  process.exit(1);
});
