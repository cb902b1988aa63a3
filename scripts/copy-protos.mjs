// The .proto files are read at run time by @grpc/proto-loader; tsc does not copy them.
import { cpSync } from 'node:fs';
cpSync('src/api/proto', 'dist/src/api/proto', { recursive: true });
cpSync('src/encryption/proto', 'dist/src/encryption/proto', { recursive: true });
