# syntax=docker/dockerfile:1
#
# keygate as a container: `docker build -t keygate .` at the repository root,
# or deploy/compose.yaml (Postgres, Redis, two replicas, nginx in front).
# Without DATABASE_URL it runs on the embedded database in /var/lib/keygate
# (one instance only: mount a volume there); with it, any number of replicas.

ARG NODE_IMAGE=node:24-bookworm-slim

# --- build: TypeScript (src/ and the committed gen/) → dist/ ---------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: "prepare" runs `npm run build`, and the sources are not here yet.
# The compiler needs none of the install scripts (they belong to buf and protobufjs).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY src ./src
# tsconfig.build.json also includes bench/, which the image leaves out: dist/src and dist/gen are all it runs.
RUN npm run build

# --- runtime: production dependencies, the compiled code, the default policy ----------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: "prepare" would call the compiler, a dev dependency; no runtime dependency has an install script.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
# Migrations are compiled modules imported by src/core/db/migrate.ts, so dist/ carries them;
# policies/ is the shipped default (./policies from WORKDIR, and SHIPPED_POLICY_DIR).
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/dist/gen ./dist/gen
COPY bin ./bin
COPY policies ./policies

# Code stays root-owned and read-only to the server; it writes only its data dir (PGlite).
RUN groupadd --system --gid 10001 keygate \
 && useradd --system --uid 10001 --gid keygate --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keygate \
 && install -d -o keygate -g keygate -m 0700 /var/lib/keygate
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# keygate listens on 127.0.0.1 by default; in a container it must take connections from outside.
ENV KEYGATE_HOST=0.0.0.0 \
    PORT=8080 \
    KEYGATE_DATA_DIR=/var/lib/keygate
# gRPC, Connect, gRPC-Web and the Cube callback, all on this one port.
EXPOSE 8080

# Liveness: GET /healthz answers 200 while the process serves HTTP (it never touches the database,
# so an outage does not get the container restarted; /readyz is for readiness). It asks 127.0.0.1,
# which KEYGATE_HOST=0.0.0.0 covers (not a KEYGATE_HOST naming one other address).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "require('node:http').get({host:'127.0.0.1',port:process.env.PORT||8080,path:'/healthz',timeout:2000},(r)=>process.exit(r.statusCode===200?0:1)).on('timeout',()=>process.exit(1)).on('error',()=>process.exit(1))"]

# `docker run IMAGE keygen --role admin …` runs any other keygate command.
ENTRYPOINT ["node", "bin/keygate.js"]
CMD ["serve"]
