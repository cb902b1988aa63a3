# A Rampart member image: `docker build -t rampart .`. The container runs `rampart` as an unprivileged
# user; give it a bundle from `rampart init` (see deploy/kubernetes/rampart.yaml) and a data volume.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY src ./src
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /opt/rampart
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json LICENSE README.md ./
COPY bin ./bin
COPY policies ./policies
COPY deploy ./deploy
RUN ln -s /opt/rampart/bin/rampart.js /usr/local/bin/rampart \
  && groupadd --system --gid 10001 rampart \
  && useradd --system --uid 10001 --gid rampart --home-dir /var/lib/rampart --shell /usr/sbin/nologin rampart \
  && install -d -m 0700 -o rampart -g rampart /var/lib/rampart /etc/rampart
USER 10001:10001
# client, peer, metrics and health (https; /livez and /readyz need no client certificate)
EXPOSE 2379 2380 2381
ENTRYPOINT ["rampart"]
CMD ["--help"]
