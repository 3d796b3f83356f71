import Foundation
import Testing
@testable import TalkieCore

/// Events cross processes (cluster workers → pages) as JSON lines and must come back whole.
@Suite struct EventLineTests {
    @Test func everyEventSurvivesItsJSONLine() throws {
        let key = ItemKey(video: ContentHash(high: 1, low: 2), audio: ContentHash(high: 3, low: 4))
        let events: [BatchEvent] = [
            .batchStarted(total: 3, toRender: 2, settings: "engine classic"),
            .itemQueued(key: key, name: "a.mp4"),
            .itemStarted(key: key, name: "a.mp4", attempt: 2, device: "gpu 1"),
            .itemStarted(key: key, name: "a.mp4", attempt: 1, device: nil),
            .itemProgress(key: key, progress: RenderProgress(frame: 5, frames: 100, unit: .percent, stage: "warp")),
            .itemSucceeded(key: key, name: "a.mp4", output: "a.1234.mp4", seconds: 1.5, score: 0.875),
            .itemFailed(key: key, name: "a.mp4", error: ItemError(kind: .input, message: "no face"), willRetry: false),
            .itemStopped(key: key, name: "a.mp4"),
            .warning("disk is filling up"),
            .batchFinished(BatchSummary(total: 3, succeeded: 2, failed: 1, pending: 0, renderedThisRun: 2, interrupted: true)),
        ]
        let time = Date(timeIntervalSince1970: 1_700_000_000.25)
        for event in events {
            let line = TimedEvent(time: time, event: event).jsonLine
            let parsed = try #require(TimedEvent(jsonLine: line), "\(line)")
            #expect(parsed.event == event)
            #expect(abs(parsed.time.timeIntervalSince(time)) < 0.001)
        }
        #expect(TimedEvent(jsonLine: "{\"time\":\"2024-01-01T00:00:00.000Z\",\"event\":\"nonsense\"}") == nil)
        #expect(TimedEvent(jsonLine: "not json") == nil)
    }
}
