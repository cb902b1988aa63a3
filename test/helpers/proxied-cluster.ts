/**
 * A cluster of real members whose peer traffic goes through fault-injecting proxies (one in front
 * of each member's peer port, test/helpers/fault-proxy.ts), so a test can partition, isolate and
 * heal members while clients talk to their client ports directly.
 */
import { memberIdFor } from '../../src/server/membership.js';
import { FaultProxy, PeerNetwork } from './fault-proxy.js';
import { freePort, removeDirectory, startRampart, temporaryDirectory, type ServerProcess } from './processes.js';

export interface ProxiedMember {
  readonly name: string;
  /** Its member id (hex), from the proxy's address it advertises as its peer URL. */
  readonly id: string;
  readonly port: number;
  /** Where it listens for peers (privately: its peers reach it through `proxyPort`). */
  readonly peerPort: number;
  readonly proxyPort: number;
  readonly dataDir: string;
  process: ServerProcess | undefined;
}

export interface ProxiedCluster {
  readonly members: ProxiedMember[];
  /** Every member's id, for `network.isolate`. */
  readonly ids: readonly string[];
  readonly network: PeerNetwork;
  /** Starts (or restarts, with its data) one member. */
  start(member: ProxiedMember): Promise<void>;
  /** Stops every member and proxy and removes the data directories. */
  remove(): Promise<void>;
}

/**
 * Prepares `size` members named `${prefix}1`... behind their proxies (listening already) and
 * returns them unstarted: `start` each (together, so the first election can be won). `args` are
 * added to every member's flags.
 */
export async function proxiedCluster(prefix: string, size: number, args: readonly string[] = []): Promise<ProxiedCluster> {
  const network = new PeerNetwork();
  const members: ProxiedMember[] = [];
  for (let index = 1; index <= size; index++) {
    const proxyPort = await freePort();
    members.push({
      name: `${prefix}${index}`,
      id: memberIdFor([`http://127.0.0.1:${proxyPort}`], 'rampart-cluster'),
      port: await freePort(),
      peerPort: await freePort(),
      proxyPort,
      dataDir: await temporaryDirectory(`${prefix}${index}`),
      process: undefined,
    });
  }
  const ids = members.map((member) => member.id);
  for (const member of members) {
    const proxy = new FaultProxy(member.id, member.peerPort, ids, network.rule);
    await proxy.listen(member.proxyPort);
    network.proxies.push(proxy);
  }
  const initialCluster = members.map((member) => `${member.name}=http://127.0.0.1:${member.proxyPort}`).join(',');
  return {
    members,
    ids,
    network,
    start: async (member) => {
      member.process = await startRampart({
        name: member.name,
        port: member.port,
        peerPort: member.peerPort,
        dataDir: member.dataDir,
        args: ['--initial-advertise-peer-urls', `http://127.0.0.1:${member.proxyPort}`, '--initial-cluster', initialCluster, ...args],
      });
    },
    remove: async () => {
      await Promise.all(members.map((member) => member.process?.stop()));
      await network.close();
      await Promise.all(members.map((member) => removeDirectory(member.dataDir)));
    },
  };
}
