/**
 * The connections a listening port accepted and that are still open, their TLS handshake finished
 * or not, so that closing the port ends them instead of waiting for them. grpc-js cannot: its
 * tryShutdown waits until every connection is gone, and its forceShutdown destroys only the HTTP/2
 * sessions it tracks for channelz (disabled on both ports here), never a connection still in its
 * TLS handshake. Another member's message stream, a client's Watch or LeaseKeepAlive, stays open as
 * long as its other end runs.
 *
 * Owns: knowing every open connection of a port, and ending those left after a grace. Never: what
 * they carry, or how a protocol closes gracefully (the port's owner starts that).
 */
import type { Server, Socket } from 'node:net';

/**
 * How long closing a port lets its calls finish (an answer in flight, a message batch) before it
 * ends every connection still open.
 */
export const closeGraceMs = 500;

export class OpenConnections {
  private readonly sockets = new Set<Socket>();
  private readonly noneLeft: (() => void)[] = [];

  /** Tracks every connection `server` accepts from now on, from the TCP accept (before any TLS byte). */
  track(server: Server): void {
    server.on('connection', (socket: Socket) => this.add(socket));
  }

  private add(socket: Socket): void {
    if (socket.destroyed) return; // refused as it was accepted (connection-limit.ts)
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      if (this.sockets.size === 0) for (const resolve of this.noneLeft.splice(0)) resolve();
    });
  }

  /** Resolves once no connection is open. */
  whenNoneLeft(): Promise<void> {
    if (this.sockets.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.noneLeft.push(resolve));
  }

  /**
   * Waits for `closing` (the port's own graceful close, which finishes once its connections are
   * gone); once `graceMs` has passed, runs `onGraceOver` and destroys every connection still open,
   * so that it does finish.
   */
  async endAfterGrace(closing: Promise<unknown>, graceMs = closeGraceMs, onGraceOver?: () => void): Promise<void> {
    const forced = setTimeout(() => {
      onGraceOver?.();
      for (const socket of this.sockets) socket.destroy();
    }, graceMs);
    try {
      await closing;
    } finally {
      clearTimeout(forced);
    }
  }
}
