import ArgumentParser
import Foundation
import TalkieCluster
import TalkieCore
import TalkieRunner

/// `--store postgres://…`: the cluster's database.
struct StoreOption: ParsableArguments {
    init() {}

    init(store: String) { self.store = store }

    @Option(name: .long, help: ArgumentHelp("Cluster mode: the PostgreSQL database the machines share, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.", valueName: "url"))
    var store: String

    func open() throws -> ClusterStore {
        do { return ClusterStore(try ClusterDatabase(url: store)) } catch { throw ValidationError(error.message) }
    }
}

/// Runs a cluster command on the database at `url`, closing its connections at the end: a
/// `TalkieError` becomes its message on stderr and exit 2.
func clusterCommand(_ url: String, _ body: (ClusterStore) async throws -> Void) async throws {
    let cluster = try StoreOption(store: url).open()
    do {
        try await body(cluster)
        await cluster.database.close()
    } catch let error as any TalkieError {
        await cluster.database.close()
        FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
        throw ExitCode(ExitStatus.badInput)
    } catch {
        await cluster.database.close()
        throw error
    }
}

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Render a cluster's batch on this machine: claim items from PostgreSQL under leases, one engine worker per GPU.",
        discussion: """
        Start one on every GPU machine; `talkie run --store`
        gives them a batch. The output folder and the inputs must be on storage every
        machine sees at the same path (NFS or SMB). A worker that dies loses its lease
        after the batch's lease time and its item is rendered again elsewhere; if it wakes
        up later, its late result is dropped. While the database is away it keeps rendering
        and commits when it is back. Ctrl-C or SIGTERM: the running items return to the
        queue (not charged), exit 3.

        Example:
          talkie worker --store postgres://talkie@db.studio/talkie --gpus 0,1
        """)

    @OptionGroup var store: StoreOption

    @Option(name: .long, help: ArgumentHelp("Engine workers at once (on a CPU, or GPUs the engine picks itself).", valueName: "n"))
    var slots: Int = 1

    @Option(name: .long, help: ArgumentHelp("Render on these GPUs, one engine worker each (CUDA_VISIBLE_DEVICES), e.g. 0,1.", valueName: "list"))
    var gpus: String?

    @Option(name: .long, help: ArgumentHelp("This worker's name in leases and status (default: hostname:pid).", valueName: "name"))
    var name: String?

    @Flag(name: .long, help: "Exit (0) once no item of the batch is pending or running.")
    var exitWhenIdle = false

    @Flag(name: .long, help: "Print one JSON event per line (for scripts).")
    var json = false

    func validate() throws {
        try validateEngineWorkers(slots: slots, gpus: gpus)
    }

    func run() async throws {
        let cluster = try store.open()
        let devices = RunConfiguration.workerDevices(gpus: gpus.map(gpuList) ?? [], slots: slots)
        let owner = name ?? "\(ProcessInfo.processInfo.hostName):\(getpid())"
        let worker = ClusterWorker(store: cluster, config: WorkerConfiguration(name: owner, devices: devices, exitWhenIdle: exitWhenIdle))
        let signals = SignalWatcher([SIGINT, SIGTERM])
        // A worker's log: one line per change (progress goes to the pages), or JSON events.
        let printer = EventPrinter(mode: json ? .json : .plain, outputs: nil)
        async let printed: Void = { for await timed in worker.events { printer.print(timed) } }()
        let result: Result<ClusterWorker.Summary, any Error> = await withTaskGroup(of: Result<ClusterWorker.Summary, any Error>?.self) { group in
            group.addTask {
                do { return .success(try await worker.run()) } catch { return .failure(error) }
            }
            group.addTask {
                for await _ in signals.stream {
                    FileHandle.standardError.write(Data("stopping: the running items return to the queue...\n".utf8))
                    signals.exitOnNextSignal(ExitStatus.interrupted)
                    worker.shutdown()
                }
                return nil
            }
            var outcome: Result<ClusterWorker.Summary, any Error>?
            for await next in group where next != nil {
                outcome = next
                group.cancelAll()
            }
            return outcome ?? .failure(CancellationError())
        }
        await printed
        await cluster.database.close()
        switch result {
        case .success(let summary):
            FileHandle.standardError.write(Data("\(owner): rendered \(summary.rendered) items; \(summary.abandoned) dropped after a lost lease\n".utf8))
            if worker.isShuttingDown { throw ExitCode(ExitStatus.interrupted) }
        case .failure(let error as any TalkieError):
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        case .failure(let error):
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
    }
}

struct Pause: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cluster mode: workers finish their current items and claim no more (`talkie run --store` resumes).")

    @OptionGroup var store: StoreOption

    func run() async throws {
        try await clusterCommand(store.store) { cluster in
            try await cluster.setPaused(true)
            print("paused: the running items finish, nothing new starts; `talkie run --store …` continues")
        }
    }
}

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cluster mode: the running items stop now and return to the queue (not charged); nothing new starts.")

    @OptionGroup var store: StoreOption

    func run() async throws {
        try await clusterCommand(store.store) { cluster in
            try await cluster.stop()
            print("stopped: workers return their items to the queue within a few seconds; `talkie run --store …` continues")
        }
    }
}

struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Cluster mode: create or migrate the database's schema; move a batch between an output folder and PostgreSQL.",
        subcommands: [Migrate.self, Export.self, Import.self, Benchmark.self])

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create the cluster's tables, or migrate them to this Talkie's schema.")

        @OptionGroup var store: StoreOption

        func run() async throws {
            try await clusterCommand(store.store) { cluster in
                let before = try await ClusterSchema.migrate(cluster.database)
                print(before == ClusterSchema.current ? "schema \(ClusterSchema.current) (already current)"
                                                      : "schema \(ClusterSchema.current) (was \(before))")
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the cluster's batch into an output folder's task_status.json (continue it on one machine with `talkie run --out`).")

        @OptionGroup var store: StoreOption

        @Option(name: .long, help: ArgumentHelp("The output folder to write (not in use by a run).", valueName: "folder"))
        var out: String

        func run() async throws {
            try await clusterCommand(store.store) { cluster in
                let folder = URL(fileURLWithPath: out).standardizedFileURL.path
                let count = try await ClusterBatchCommands.export(cluster, to: folder, writtenBy: "talkie \(Talkie.version)")
                print("exported \(count) items to \(out)/task_status.json")
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an output folder's batch (task_status.json) into the cluster, so workers continue it.")

        @OptionGroup var store: StoreOption

        @Option(name: .long, help: ArgumentHelp("The output folder to read (on the shared storage, for workers to render into).", valueName: "folder"))
        var out: String

        func run() async throws {
            try await clusterCommand(store.store) { cluster in
                let folder = URL(fileURLWithPath: out).standardizedFileURL.path
                let count = try await ClusterBatchCommands.importState(cluster, from: folder)
                print("imported \(count) items from \(out)/task_status.json")
            }
        }
    }
}

extension StoreCommand {
    struct Benchmark: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure how fast a database hands out work: items claimed and committed per second, no engine.",
            discussion: """
            Runs on an empty database (createdb talkie_bench) and leaves it empty. Each
            worker count runs in turn; each worker is a claimer with its own connection,
            as a `talkie worker` process has.
              talkie store benchmark --store postgres://talkie@db/talkie_bench --workers 1,2,4,8
            """)

        @OptionGroup var store: StoreOption

        @Option(name: .long, help: ArgumentHelp("Worker counts to measure, in turn.", valueName: "list"))
        var workers: String = "1,2,4,8"

        @Option(name: .long, help: ArgumentHelp("Items per measurement.", valueName: "n"))
        var items: Int = 2000

        @Flag(name: .long, help: "Print one JSON object per measurement.")
        var json = false

        func validate() throws {
            guard items >= 1 else { throw ValidationError("--items must be at least 1") }
            guard !counts.isEmpty, counts.allSatisfy({ $0 >= 1 && $0 <= 256 }) else {
                throw ValidationError("--workers must list counts between 1 and 256, e.g. 1,2,4,8")
            }
        }

        private var counts: [Int] { workers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

        func run() async throws {
            try await clusterCommand(store.store) { cluster in
                for count in counts {
                    let result = try await ClaimBenchmark.run(cluster, workers: count, items: items)
                    if json {
                        let encoder = JSONEncoder()
                        encoder.outputFormatting = [.sortedKeys]
                        print(String(decoding: try encoder.encode(result), as: UTF8.self))
                    } else {
                        print(String(format: "%3d workers: %6d items in %6.2f s, %8.1f items/s; claim p50 %.2f ms p99 %.2f ms; commit p50 %.2f ms p99 %.2f ms; %d claimed twice",
                                     result.workers, result.items, result.seconds, result.itemsPerSecond, result.claimP50,
                                     result.claimP99, result.commitP50, result.commitP99, result.duplicates))
                    }
                }
            }
        }
    }
}

/// `talkie run --store` and `talkie retry --store`: the batch goes to the cluster, and this
/// process follows it to its end (or returns at once with --detach).
enum ClusterRunCommand {
    static func execute(_ configuration: RunConfiguration, options: BatchOptions, url: String) async throws {
        let store: ClusterStore
        do { store = ClusterStore(try ClusterDatabase(url: url)) } catch { throw ValidationError(error.message) }
        let printer = EventPrinter(mode: options.json ? .json : (isatty(STDOUT_FILENO) == 1 ? .terminal : .plain),
                                   outputs: configuration.outputs, store: store.database.displayURL)
        var policy = ClusterPolicy()
        policy.maxAttempts = options.maxAttempts
        policy.retryDelay = options.retryDelay
        policy.itemTimeout = options.itemTimeout
        policy.leaseSeconds = options.leaseSeconds
        policy.contactSheets = options.contactSheet
        let finished: BatchSummary?
        do {
            finished = try await submitAndFollow(store, configuration: configuration, policy: policy, printer: printer,
                                                 detach: options.detach)
            await store.database.close()
        } catch let error as any TalkieError {
            await store.database.close()
            printer.error(error.message, code: error.code)
            throw ExitCode(ExitStatus.badInput)
        } catch {
            await store.database.close()
            throw error
        }
        printer.finish()
        if let finished, finished.failed > 0 { throw ExitCode(ExitStatus.someFailed) }
    }

    /// The summary at the end, or nil with `detach`.
    private static func submitAndFollow(_ store: ClusterStore, configuration: RunConfiguration, policy: ClusterPolicy,
                                        printer: EventPrinter, detach: Bool) async throws -> BatchSummary? {
        let keys = try await ClusterBatchCommands.submit(store, config: configuration, policy: policy)
        let summary = try await ClusterBatchCommands.summary(store)
        printer.print(TimedEvent(time: Date(), event: .batchStarted(total: keys.count, toRender: summary.pending,
                                                                     settings: "cluster \(store.database.displayURL)")))
        if detach {
            printer.note("queued in the cluster; workers render it (`talkie status --store …` shows where it is)")
            return nil
        }
        let finished = try await ClusterBatchCommands.follow(store, show: { printer.print($0) }, note: { printer.note($0) })
        printer.print(TimedEvent(time: Date(), event: .batchFinished(finished)))
        return finished
    }
}

/// `talkie status --store`: the cluster's items with their leases.
enum ClusterStatus {
    static func show(_ cluster: ClusterStore, json: Bool) async throws {
        try await ClusterSchema.check(cluster.database)
        let batch = try await cluster.batch()
        let items = try await cluster.items()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            var rows: [JSONValue] = []
            for entry in items {
                guard case .object(var fields) = try JSONDecoder().decode(JSONValue.self, from: encoder.encode(entry.item)) else { continue }
                fields["inBatch"] = .bool(entry.inBatch)
                if entry.item.state.status == .running, let owner = entry.leaseOwner, let token = entry.leaseToken {
                    fields["lease"] = .object(["owner": .string(owner), "token": .number(Double(token)),
                                               "expiresInSeconds": .number(entry.leaseExpiresIn ?? 0)])
                } else {
                    fields["lease"] = .null
                }
                rows.append(.object(fields))
            }
            var document: [String: JSONValue] = ["schema": .number(Double(ClusterSchema.current)), "items": .array(rows),
                                                 "paused": .bool(batch.paused)]
            document["outputs"] = batch.outputs.map(JSONValue.string) ?? .null
            if let inputs = batch.inputs {
                document["batch"] = try JSONDecoder().decode(JSONValue.self, from: encoder.encode(inputs))
            }
            FileHandle.standardOutput.write(try encoder.encode(document) + Data("\n".utf8))
            return
        }
        print("cluster \(cluster.database.displayURL), schema \(ClusterSchema.current)\(batch.paused ? ", paused" : "")"
              + (batch.outputs.map { ", outputs in \($0)" } ?? ""))
        var counts: [ItemStatus: Int] = [:]
        for entry in items where entry.inBatch {
            let item = entry.item
            counts[item.state.status, default: 0] += 1
            var detail = item.state.output ?? ""
            if item.state.status != .success, let error = item.state.lastError { detail = "\(error.kind.rawValue): \(error.message)" }
            if item.state.status == .running, let owner = entry.leaseOwner {
                detail = "on \(owner), lease \(entry.leaseToken ?? 0) for \(Int(entry.leaseExpiresIn ?? 0)) s more"
            }
            print(item.displayName.padding(toLength: 28, withPad: " ", startingAt: 0) + " "
                  + item.state.status.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0) + " "
                  + String(item.state.attempts).padding(toLength: 3, withPad: " ", startingAt: 0) + " " + detail)
        }
        print("\(counts.values.reduce(0, +)) items in the batch: " + ItemStatus.allCases.map { "\(counts[$0] ?? 0) \($0.rawValue)" }.joined(separator: ", "))
    }
}
