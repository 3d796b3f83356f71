import Foundation
import Logging
import PostgresNIO
import Synchronization
import TalkieCore

/// Why a cluster command could not do its work.
public struct ClusterError: TalkieError, Equatable {
    /// A stable identifier: `cluster.unreachable`, `cluster.schema`, `cluster.url`, ...
    public let code: String
    /// What went wrong and what to do.
    public let message: String

    /// Creates an error.
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// Whether the database could not be reached (worth waiting for), rather than refusing.
    public var isOutage: Bool { code == "cluster.unreachable" }
}

/// The PostgreSQL database of a cluster: a few connections kept open, one per concurrent
/// use, opened again after the database went away. Never shares a connection between two
/// callers, so a transaction is always a caller's own.
public final class ClusterDatabase: Sendable {
    /// The URL with its password hidden, for messages.
    public let displayURL: String
    private let configuration: PostgresConnection.Configuration
    private let idle = Mutex<[PostgresConnection]>([])
    private let nextID = Atomic<Int>(0)
    private let logger = Logger(label: "talkie.cluster")

    /// Parses `postgres://user[:password]@host[:port]/database`.
    public init(url: String) throws(ClusterError) {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme ?? ""),
              let host = components.host, !host.isEmpty else {
            throw ClusterError(code: "cluster.url", message: "--store \(url) is not a PostgreSQL URL; write it as postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard let user = components.user, !user.isEmpty, !database.isEmpty else {
            throw ClusterError(code: "cluster.url", message: "--store \(url) names no user or no database; write it as postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        }
        var configuration = PostgresConnection.Configuration(
            host: host, port: components.port ?? 5432, username: user.removingPercentEncoding ?? user,
            password: components.password?.removingPercentEncoding, database: database, tls: .disable)
        configuration.options.connectTimeout = .seconds(5)
        self.configuration = configuration
        var shown = components
        if shown.password != nil { shown.password = "***" }
        displayURL = shown.string ?? url
    }

    /// Runs `body` on a connection of its own. A connection that failed is closed, never
    /// reused. Errors come back as `ClusterError`, with `isOutage` when the database could
    /// not be reached.
    @discardableResult
    public func withConnection<Result>(_ body: (PostgresConnection) async throws -> Result) async throws(ClusterError) -> Result {
        let connection = try await take()
        do {
            let result = try await body(connection)
            await give(connection)
            return result
        } catch {
            try? await connection.close()
            throw describe(error)
        }
    }

    /// Runs `body` in a transaction on a connection of its own (committed when it returns,
    /// rolled back when it throws).
    @discardableResult
    public func transaction<Result>(_ body: (PostgresConnection) async throws -> Result) async throws(ClusterError) -> Result {
        let logger = logger
        return try await withConnection { connection in
            try await connection.query("BEGIN", logger: logger)
            do {
                let result = try await body(connection)
                try await connection.query("COMMIT", logger: logger)
                return result
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger)
                throw error
            }
        }
    }

    /// Runs `body` until it succeeds. While the database cannot be reached it waits, 0.2 s
    /// doubling to 5 s, and tries again, telling `waiting` once per outage. Other errors are
    /// thrown; cancellation ends the wait with `CancellationError`.
    public func persistently<Result>(waiting: (ClusterError) -> Void = { _ in },
                                     _ body: () async throws(ClusterError) -> Result) async throws -> Result {
        var delay = 0.2
        var told = false
        while true {
            let outage: ClusterError
            do {
                return try await body()
            } catch {
                guard error.isOutage else { throw error }
                outage = error
            }
            if !told { waiting(outage) }
            told = true
            try await Task.sleep(for: .seconds(delay))
            delay = min(5, delay * 2)
        }
    }

    /// Closes the idle connections.
    public func close() async {
        let connections = idle.withLock { idle in
            defer { idle.removeAll() }
            return idle
        }
        for connection in connections { try? await connection.close() }
    }

    /// A query's logger (the database's own messages stay out of Talkie's output).
    var queryLogger: Logger { logger }

    private func take() async throws(ClusterError) -> PostgresConnection {
        while let connection = idle.withLock({ $0.popLast() }) {
            if !connection.isClosed { return connection }
        }
        do {
            return try await PostgresConnection.connect(configuration: configuration, id: nextID.add(1, ordering: .relaxed).newValue,
                                                        logger: logger)
        } catch {
            throw describe(error)
        }
    }

    /// Keeps a healthy connection for the next caller (up to 16, one per concurrent use).
    private func give(_ connection: PostgresConnection) async {
        let kept = idle.withLock { idle -> Bool in
            guard idle.count < 16 else { return false }
            idle.append(connection)
            return true
        }
        if !kept { try? await connection.close() }
    }

    /// A database error as a `ClusterError` a user can act on.
    func describe(_ error: any Error) -> ClusterError {
        if let error = error as? ClusterError { return error }
        if error is CancellationError { return ClusterError(code: "cluster.cancelled", message: "cancelled") }
        if let error = error as? PSQLError {
            if error.code == .server {
                let state = error.serverInfo?[.sqlState] ?? ""
                let text = error.serverInfo?[.message] ?? "\(error)"
                // 08: connection exceptions; 57P: the server is shutting down or starting.
                if state.hasPrefix("08") || state.hasPrefix("57P") {
                    return ClusterError(code: "cluster.unreachable", message: "the database at \(displayURL) is not available: \(text)")
                }
                if state == "3D000" || state == "28000" || state == "28P01" {
                    return ClusterError(code: "cluster.refused", message: "the database at \(displayURL) refused the connection: \(text); check the URL's user, password and database name")
                }
                return ClusterError(code: "cluster.query", message: "the database at \(displayURL) answered: \(text) (SQLSTATE \(state))")
            }
            let cause = error.underlying.map { ": \($0)" } ?? ""
            return ClusterError(code: "cluster.unreachable", message: "cannot reach the database at \(displayURL) (\(error.code)\(cause)); is PostgreSQL running there?")
        }
        return ClusterError(code: "cluster.unreachable", message: "cannot reach the database at \(displayURL): \(error); is PostgreSQL running there?")
    }
}
