import Foundation
import Testing
import TalkieCore
@testable import TalkieRunner

@Suite struct ReconcilerTests {
    let audio = ContentHash(high: 9, low: 9)
    let now = Date(timeIntervalSince1970: 1_000)
    func hash(_ n: UInt64) -> ContentHash { ContentHash(high: n, low: n) }
    func reconciler(retry: RetryRequest? = nil) -> Reconciler {
        Reconciler(audio: audio, audioPath: "/a.wav", settingsFingerprint: "current", maxAttempts: 3, retry: retry)
    }
    func item(_ n: UInt64, _ status: ItemStatus, names: [String], fingerprint: String = "current", attempts: Int = 1) -> Item {
        var item = Item(key: ItemKey(video: hash(n), audio: audio), names: names, audioPath: "/a.wav", createdAt: now)
        item.state = ItemState(status: status, attempts: attempts, output: status == .success ? "out\(n).mp4" : nil,
                               settingsFingerprint: status == .success ? fingerprint : nil)
        return item
    }

    @Test func newInputsBecomePendingItems() {
        let plan = reconciler().plan(stored: [:], inputs: [.init(path: "/t/b.mp4", hash: hash(2)), .init(path: "/t/a.mp4", hash: hash(1))],
                                     now: now, outputExists: { _ in true })
        #expect(plan.changed.count == 2)
        #expect(plan.changed.allSatisfy { $0.state.status == .pending })
        #expect(plan.batch.map(\.video) == [hash(1), hash(2)])  // sorted by name
    }

    @Test func aRenamedInputKeepsItsSuccess() {
        let done = item(1, .success, names: ["/t/old.mp4"])
        let plan = reconciler().plan(stored: [done.key: done], inputs: [.init(path: "/t/new.mp4", hash: hash(1))], now: now, outputExists: { _ in true })
        #expect(plan.changed.first?.names == ["/t/new.mp4"])
        #expect(plan.changed.first?.state.status == .success)
    }

    @Test func sameContentUnderTwoNamesIsOneItemWithBothNames() {
        let plan = reconciler().plan(stored: [:], inputs: [.init(path: "/t/a.mp4", hash: hash(1)), .init(path: "/t/copy.mp4", hash: hash(1))],
                                     now: now, outputExists: { _ in true })
        #expect(plan.batch.count == 1)
        #expect(plan.changed.first?.names == ["/t/a.mp4", "/t/copy.mp4"])
    }

    @Test func unchangedItemsAreNotRewritten() {
        let done = item(1, .success, names: ["/t/a.mp4"])
        let plan = reconciler().plan(stored: [done.key: done], inputs: [.init(path: "/t/a.mp4", hash: hash(1))], now: now, outputExists: { _ in true })
        #expect(plan.changed.isEmpty)
        #expect(plan.batch == [done.key])
    }

    @Test func runningItemsWereInterrupted() {
        let running = item(1, .running, names: ["/t/a.mp4"], attempts: 1)
        let plan = reconciler().plan(stored: [running.key: running], inputs: [.init(path: "/t/a.mp4", hash: hash(1))], now: now, outputExists: { _ in true })
        #expect(plan.changed.first?.state.status == .pending)
        #expect(plan.changed.first?.state.attempts == 1)
    }

    @Test func aSuccessWhoseOutputVanishedIsRenderedAgain() {
        let done = item(1, .success, names: ["/t/a.mp4"])
        let plan = reconciler().plan(stored: [done.key: done], inputs: [.init(path: "/t/a.mp4", hash: hash(1))], now: now, outputExists: { _ in false })
        #expect(plan.changed.first?.state.status == .pending)
    }

    @Test func retryFailedAndOtherSettings() {
        let failed = item(1, .failed, names: ["/t/a.mp4"], attempts: 3)
        let old = item(2, .success, names: ["/t/b.mp4"], fingerprint: "old")
        let current = item(3, .success, names: ["/t/c.mp4"])
        let stored = [failed.key: failed, old.key: old, current.key: current]
        let inputs: [Reconciler.Input] = [.init(path: "/t/a.mp4", hash: hash(1)), .init(path: "/t/b.mp4", hash: hash(2)), .init(path: "/t/c.mp4", hash: hash(3))]
        let none = reconciler().plan(stored: stored, inputs: inputs, now: now, outputExists: { _ in true })
        #expect(none.changed.isEmpty)
        let retried = reconciler(retry: .failed).plan(stored: stored, inputs: inputs, now: now, outputExists: { _ in true })
        #expect(retried.changed.map(\.key) == [failed.key])
        #expect(retried.changed.first?.state.attempts == 0)
        let rerendered = reconciler(retry: .otherSettings).plan(stored: stored, inputs: inputs, now: now, outputExists: { _ in true })
        #expect(rerendered.changed.map(\.key) == [old.key])
        #expect(rerendered.changed.first?.state.status == .pending)
    }

    @Test func itemsOfAnotherNarrationStayOutOfTheBatch() {
        var other = item(1, .success, names: ["/t/a.mp4"])
        other.key = ItemKey(video: hash(1), audio: hash(77))
        let plan = reconciler().plan(stored: [other.key: other], inputs: [.init(path: "/t/a.mp4", hash: hash(1))], now: now, outputExists: { _ in true })
        #expect(plan.batch == [ItemKey(video: hash(1), audio: audio)])
        #expect(plan.changed.count == 1)  // the new item for this narration
    }
}
