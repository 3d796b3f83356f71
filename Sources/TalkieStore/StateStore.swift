import Foundation
import TalkieCore

/// How the state was found when the store opened.
public struct RecoveryReport: Sendable, Equatable {
    /// Where the state came from.
    public enum Source: String, Sendable {
        /// `task_status.json` (plus the journal).
        case snapshot
        /// `task_status.json.bak` (plus the journals), because the snapshot was unusable.
        case backup
        /// The journals alone.
        case journal
        /// A state file in the seed's (older tools') format, to be imported.
        case legacy
        /// Nothing: a new batch.
        case fresh
    }

    /// Where the state came from.
    public var source: Source = .fresh
    /// Journal records applied on top of the snapshot.
    public var replayedRecords = 0
    /// What recovery noticed and did, for the run log.
    public var notes: [String] = []
    /// State was damaged or partly lost: successes must be recovered from the outputs'
    /// metadata (or, when `source == .fresh`, outputs may hold work of an earlier state).
    public var needsRebuild = false
    /// Files moved aside as evidence.
    public var movedAside: [String] = []
    /// Entries of a legacy state file, keyed by the MD5 of the template.
    public var legacy: [String: LegacyEntry] = [:]
}

/// The durable state of one output folder: a journal of single-item changes (append +
/// fdatasync, O(1) per change) compacted into the snapshot `task_status.json` (temp file,
/// fsync, rename, fsync the folder), the previous snapshot kept as `task_status.json.bak`.
///
/// Only the runner writes through a store, and only while it holds the folder's `StoreLock`.
/// Not thread-safe: its owner (an actor) serialises calls.
public final class StateStore {
    /// The output folder.
    public let folder: String
    /// How the state was found.
    public let recovery: RecoveryReport
    /// The batch's inputs and settings, once a run recorded them.
    public private(set) var batch: BatchInputs?
    /// Every settings fingerprint that made an output.
    public private(set) var settingsHistory: [String: RenderSettings]
    /// Snapshot generation on disk.
    public private(set) var generation: Int

    private var items: [ItemKey: Item]
    private var nextSequence: Int
    private var recordsSinceCompaction = 0
    private var journalFD: Int32 = -1
    private var poisoned = false
    private let ops: FileOps
    private let writtenBy: String
    private let compactionInterval: Int
    /// Whether `task_status.json` lacks changes: journal records, or a recovery it must record.
    private var snapshotIsBehind: Bool

    /// `task_status.json`.
    public static let snapshotName = "task_status.json"
    static let backupName = "task_status.json.bak"
    static let journalName = "task_status.journal"
    static let previousJournalName = "task_status.journal.prev"
    /// Every file `read(folder:)` may decode.
    static let stateFileNames = [snapshotName, backupName, journalName, previousJournalName]

    /// Opens the state of `folder` for writing: recovers it, sweeps stale temp files, opens
    /// the journal. The caller must hold the folder's `StoreLock`. The journal is compacted
    /// once it holds `compactionInterval` records or as many as there are items.
    public init(folder: String, ops: FileOps = .system, writtenBy: String = "talkie",
                compactionInterval: Int = 2_000) throws(StoreError) {
        self.folder = folder
        self.ops = ops
        self.writtenBy = writtenBy
        self.compactionInterval = compactionInterval
        let loaded = try Self.load(folder: folder, ops: ops, mutate: true)
        self.recovery = loaded.report
        self.items = loaded.items
        self.batch = loaded.document.batch
        self.settingsHistory = loaded.document.settingsHistory
        self.generation = loaded.document.generation
        self.nextSequence = loaded.lastSequence + 1
        self.recordsSinceCompaction = loaded.report.replayedRecords
        self.snapshotIsBehind = loaded.report.source != .snapshot || loaded.report.replayedRecords > 0
            || loaded.report.needsRebuild || !loaded.report.notes.isEmpty
        Self.sweepTempFiles(folder: folder)
        let journal = Self.path(folder, Self.journalName)
        let existed = access(journal, F_OK) == 0
        journalFD = open(journal, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard journalFD >= 0 else { throw .io("cannot open the journal", path: journal, errno: errno) }
        if !existed { try ops.syncDirectory(folder) }
    }

    deinit { close() }

    /// Reads the state of `folder` without changing any file (for `talkie status`).
    public static func read(folder: String) throws(StoreError) -> (document: StateDocument, report: RecoveryReport) {
        let loaded = try load(folder: folder, ops: .system, mutate: false)
        var document = loaded.document
        document.items = loaded.items.values.sorted { $0.key < $1.key }
        document.lastSequence = loaded.lastSequence
        return (document, loaded.report)
    }

    /// Closes the journal. The store can no longer write.
    public func close() {
        if journalFD >= 0 { Foundation.close(journalFD) }
        journalFD = -1
    }

    /// Every item, sorted by key.
    public var allItems: [Item] { items.values.sorted { $0.key < $1.key } }

    /// Every item by key: the store's own dictionary, shared until either side changes it, so a
    /// large batch is not copied.
    public var itemsByKey: [ItemKey: Item] { items }

    /// The number of items.
    public var count: Int { items.count }

    /// One item by key.
    public func item(_ key: ItemKey) -> Item? { items[key] }

    /// Makes the given item records and batch inputs durable (one journal append, one
    /// fdatasync) and applies them. When it returns, they survive a crash; when it throws,
    /// nothing may be reported and the store refuses further writes.
    public func commit(_ changed: [Item], batch newBatch: BatchInputs? = nil) throws(StoreError) {
        guard !poisoned, journalFD >= 0 else { throw .poisoned }
        var records: [JournalRecord] = []
        if let newBatch {
            records.append(JournalRecord(seq: nextSequence, item: nil, batch: newBatch))
            nextSequence += 1
        }
        for item in changed {
            records.append(JournalRecord(seq: nextSequence, item: item, batch: nil))
            nextSequence += 1
        }
        guard !records.isEmpty else { return }
        var data = Data()
        let encoder = StateCoding.encoder(pretty: false)
        for record in records {
            data.append((try? encoder.encode(record)) ?? Data())
            data.append(0x0a)
        }
        let journal = Self.path(folder, Self.journalName)
        var before = stat()
        let length = fstat(journalFD, &before) == 0 ? Int(before.st_size) : nil
        do {
            try ops.write(fd: journalFD, data, path: journal)
            try ops.sync(fd: journalFD, path: journal, dataOnly: true)
        } catch {
            poisoned = true
            // Never a success after a failed sync: the records were not acknowledged, so they
            // must not be read back either (the page cache still holds them after an EIO).
            if let length, ftruncate(journalFD, off_t(length)) == 0 { _ = fdatasync(journalFD) }
            throw error
        }
        for record in records { apply(record) }
        recordsSinceCompaction += records.count
        snapshotIsBehind = true
        if recordsSinceCompaction >= max(compactionInterval, items.count) { try compact() }
    }

    /// Writes a new snapshot unless the one on disk already holds the whole state: a restart
    /// of a finished batch changes nothing, and rewriting every item then would cost its time
    /// and, for a large batch, more memory than the whole rest of the run.
    public func compactIfBehind() throws(StoreError) {
        if snapshotIsBehind { try compact() }
    }

    /// Writes the whole state as a new snapshot generation and starts a new journal.
    /// Called at batch end (through `compactIfBehind`) and when the journal has grown as long
    /// as the batch (so its cost, O(items), is spread over as many changes: O(1) each).
    public func compact() throws(StoreError) {
        guard !poisoned, journalFD >= 0 else { throw .poisoned }
        do throws(StoreError) {
            let document = StateDocument(
                schema: StateDocument.currentSchema, generation: generation + 1, lastSequence: nextSequence - 1,
                hashAlgorithm: FileHasher.algorithm, writtenBy: writtenBy, savedAt: Date(), batch: batch,
                settingsHistory: settingsHistory, items: allItems)
            let data = (try? StateCoding.encoder(pretty: true).encode(document)) ?? Data()
            try ops.replaceAtomically(Self.path(folder, Self.snapshotName), with: data + Data([0x0a]),
                                      backup: Self.path(folder, Self.backupName))
            generation += 1
            let journal = Self.path(folder, Self.journalName)
            Foundation.close(journalFD)
            journalFD = -1
            try ops.rename(journal, Self.path(folder, Self.previousJournalName))
            journalFD = open(journal, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard journalFD >= 0 else { throw StoreError.io("cannot create the journal", path: journal, errno: errno) }
            try ops.syncDirectory(folder)
            recordsSinceCompaction = 0
            snapshotIsBehind = false
        } catch {
            poisoned = true
            throw error
        }
    }

    /// "Clear history": forgets every item (outputs stay on disk), keeps the batch inputs.
    /// Written as a new snapshot generation, so the old one stays as `.bak`.
    public func reset() throws(StoreError) {
        items.removeAll()
        try compact()
    }

    private func apply(_ record: JournalRecord) {
        if let item = record.item { items[item.key] = item }
        if let newBatch = record.batch {
            batch = newBatch
            settingsHistory[newBatch.settings.fingerprint] = newBatch.settings
        }
    }

    // MARK: - Loading and recovery

    private struct Loaded {
        var document: StateDocument
        var items: [ItemKey: Item]
        var lastSequence: Int
        var report: RecoveryReport
    }

    private enum Parsed {
        case document(StateDocument)
        case future(Int)
        case legacy([String: LegacyEntry])
        case corrupt(String)
    }

    /// Reads only the `schema` field of a state file. Decoding this first, rather than building
    /// the whole document as `JSONSerialization` objects, keeps a large batch's start-up memory
    /// at the size of its items (a 10,000-item snapshot as objects took about 60 MB).
    private struct SchemaProbe: Decodable {
        var schema: Int?
        private enum CodingKeys: String, CodingKey { case schema }
        init(from decoder: any Decoder) throws {
            // Throws for anything but a JSON object; a schema that is not a number reads as none.
            let container = try decoder.container(keyedBy: CodingKeys.self)
            schema = try? container.decodeIfPresent(Int.self, forKey: .schema)
        }
    }

    private static func parse(_ data: Data) -> Parsed {
        guard let probe = try? StateCoding.decoder.decode(SchemaProbe.self, from: data) else {
            return .corrupt(data.isEmpty ? "it is empty" : "it is not a JSON object (truncated or damaged)")
        }
        if let schema = probe.schema {
            if schema > StateDocument.currentSchema { return .future(schema) }
            do { return .document(try StateCoding.decoder.decode(StateDocument.self, from: data)) } catch {
                return .corrupt("it does not have the shape of a Talkie state file (\(error))")
            }
        }
        // No schema: perhaps the seed's format, whose shape only a dictionary walk can tell.
        if let dictionary = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
           let legacy = LegacyEntry.parseSeedFormat(dictionary) {
            return .legacy(legacy)
        }
        return .corrupt("it is JSON but neither a Talkie state file nor an older tool's (no schema field)")
    }

    private static func load(folder: String, ops: FileOps, mutate: Bool) throws(StoreError) -> Loaded {
        var report = RecoveryReport()
        var base: StateDocument?
        var hadState = false
        let stamp = Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: false).timeSeparator(.omitted))

        let snapshotPath = path(folder, snapshotName)
        if let data = try readFileIfPresent(snapshotPath) {
            hadState = true
            switch parse(data) {
            case .document(let document):
                base = document
                report.source = .snapshot
            case .future(let schema):
                throw .futureSchema(path: snapshotPath, found: schema, supported: StateDocument.currentSchema)
            case .legacy(let entries):
                report.source = .legacy
                report.legacy = entries
                report.notes.append("\(snapshotName) is in an older tool's format (MD5 keys): \(entries.values.filter(\.isSuccess).count) successes will be imported")
                if mutate {
                    let copy = path(folder, "task_status.legacy-\(stamp).json")
                    if access(copy, F_OK) != 0 {
                        try? ops.replaceAtomically(copy, with: data)
                        report.movedAside.append(copy)
                    }
                }
            case .corrupt(let reason):
                report.notes.append("\(snapshotName) is unusable: \(reason)")
                report.needsRebuild = true
                if mutate {
                    let aside = path(folder, "\(snapshotName).corrupt-\(stamp)")
                    try ops.rename(snapshotPath, aside)
                    try ops.syncDirectory(folder)
                    report.movedAside.append(aside)
                    report.notes.append("moved it aside as \((aside as NSString).lastPathComponent)")
                }
            }
        }
        if base == nil && report.source != .legacy, let data = try readFileIfPresent(path(folder, backupName)) {
            hadState = true
            switch parse(data) {
            case .document(let document):
                base = document
                report.source = .backup
                report.needsRebuild = true
                report.notes.append("using \(backupName) (generation \(document.generation)) and the journal")
            case .future(let schema):
                throw .futureSchema(path: path(folder, backupName), found: schema, supported: StateDocument.currentSchema)
            case .legacy, .corrupt:
                report.notes.append("\(backupName) is unusable too")
                report.needsRebuild = true
            }
        }

        var document = base ?? StateDocument.empty(writtenBy: "talkie")
        var items: [ItemKey: Item] = [:]
        items.reserveCapacity(document.items.count)
        for item in document.items { items[item.key] = item }
        // The dictionary holds the items now: keeping the decoded array too would double a large batch.
        document.items = []
        base?.items = []
        var lastSequence = document.lastSequence
        var expected = lastSequence + 1
        var gap = false
        for name in [previousJournalName, journalName] {
            let records = try readJournal(folder: folder, name: name, ops: ops, mutate: mutate && name == journalName,
                                          stamp: stamp, report: &report)
            if !records.isEmpty { hadState = true }
            for record in records where record.seq > lastSequence {
                if record.seq != expected { gap = true }
                if let item = record.item { items[item.key] = item }
                if let batch = record.batch {
                    document.batch = batch
                    document.settingsHistory[batch.settings.fingerprint] = batch.settings
                }
                lastSequence = record.seq
                expected = record.seq + 1
                report.replayedRecords += 1
            }
        }
        if gap {
            report.needsRebuild = true
            report.notes.append("the journal does not continue the snapshot it starts from: some changes may be missing")
        }
        if base == nil && report.source != .legacy && hadState {
            // Complete when it starts at sequence 1 with no gap (a first run that never compacted).
            report.source = .journal
        }
        if !hadState { report.source = .fresh }
        return Loaded(document: document, items: items, lastSequence: lastSequence, report: report)
    }

    /// Reads journal records. A last line without its newline is a write torn by a crash: it
    /// was never acknowledged, so it is dropped (and cut off when `mutate`). A bad line
    /// before the end is damage: reading stops there, the file is kept aside as evidence.
    private static func readJournal(folder: String, name: String, ops: FileOps, mutate: Bool, stamp: String,
                                    report: inout RecoveryReport) throws(StoreError) -> [JournalRecord] {
        let journalPath = path(folder, name)
        guard let data = try readFileIfPresent(journalPath), !data.isEmpty else { return [] }
        var records: [JournalRecord] = []
        var goodLength = 0
        var start = data.startIndex
        var damaged = false
        while start < data.endIndex {
            guard let newline = data[start...].firstIndex(of: 0x0a) else {
                let tail = data[start...]
                // A torn append is the start of one record; zeros or garbage may hide
                // acknowledged records, so the outputs are consulted.
                if tail.first == UInt8(ascii: "{"), !tail.contains(0) {
                    report.notes.append("\(name) ends with a torn write (\(tail.count) bytes); it was never acknowledged and is dropped")
                } else {
                    report.notes.append("\(name) ends with \(tail.count) bytes that are not a journal record; changes in them are recovered from the outputs")
                    report.needsRebuild = true
                    damaged = true
                }
                break
            }
            let line = data[start..<newline]
            if !line.isEmpty {
                guard let record = try? StateCoding.decoder.decode(JournalRecord.self, from: line) else {
                    report.notes.append("\(name) is damaged at byte \(start - data.startIndex); changes after it are recovered from the outputs")
                    report.needsRebuild = true
                    damaged = true
                    break
                }
                records.append(record)
            }
            start = newline + 1
            goodLength = start - data.startIndex
        }
        if mutate && goodLength < data.count {
            if damaged {
                let aside = path(folder, "\(name).corrupt-\(stamp)")
                try? ops.replaceAtomically(aside, with: data)
                report.movedAside.append(aside)
            }
            let fd = open(journalPath, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .io("cannot open the journal", path: journalPath, errno: errno) }
            defer { Foundation.close(fd) }
            try ops.truncate(fd: fd, length: goodLength, path: journalPath)
            try ops.sync(fd: fd, path: journalPath)
        }
        return records
    }

    private static func sweepTempFiles(folder: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix(snapshotName) && name.contains(".tmp-") {
            unlink(path(folder, name))
        }
    }

    static func path(_ folder: String, _ name: String) -> String {
        (folder as NSString).appendingPathComponent(name)
    }
}
