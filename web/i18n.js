// Talkie studio: the page's words, in English and Simplified Chinese.
// Elements carry data-i18n="key" (text) or data-i18n-attr="attr:key;attr:key" (attributes);
// app.js calls I18N.t(key, {params}) for text it builds itself.
"use strict";

(function () {
  const en = {
    "app.title": "Talkie Studio",
    "app.tagline": "Batch lip-sync: one narration, many templates",
    "lang.switch": "中文",
    "lang.switchLabel": "切换到中文",
    "backup.button": "Download task_status.json backup",
    "backup.short": "Backup",
    "backup.none": "There is no task_status.json yet: run a batch first.",
    "backup.reminder": "Batch finished: {succeeded} succeeded, {failed} failed, {pending} pending. Keep a copy of task_status.json somewhere safe: it is what lets Talkie resume this batch on another machine or after an accident.",
    "backup.reminderAction": "Download backup",
    "common.dismiss": "Dismiss",
    "common.cancel": "Cancel",
    "common.remove": "Remove",

    "conn.connecting": "Connecting…",
    "conn.live": "Live",
    "conn.reconnecting": "Reconnecting…",
    "conn.reconnectingIn": "Reconnecting in {seconds} s…",
    "conn.lost": "The connection to the studio was lost. Progress shown here may be out of date until it comes back; nothing is lost on the server.",
    "conn.retryNow": "Reconnect now",
    "conn.unauthorized": "This studio needs its access token. Open the link that “talkie serve” printed (it ends with ?token=…).",
    "conn.unreachable": "The studio server cannot be reached. Is “talkie serve” still running?",

    "audio.title": "Narration",
    "audio.help": "One audio track drives every template.",
    "audio.drop": "Drop an audio file here, or <u>choose a file</u>",
    "audio.formats": "WAV, MP3, M4A, FLAC…",
    "audio.none": "No narration yet.",
    "audio.replaceHint": "Uploading another file replaces the narration of this batch.",

    "videos.title": "Templates",
    "videos.help": "Each template video becomes one lip-synced output.",
    "videos.drop": "Drop template videos here, or <u>choose files</u>",
    "videos.formats": "MP4, MOV, WebM… several at once",
    "videos.none": "No templates yet.",
    "videos.count": "{count} templates",
    "videos.count.one": "1 template",
    "videos.alsoAs": "Same content uploaded as: {names}",
    "videos.remove": "Remove template",
    "videos.removeTitle": "Remove this template from the batch?",
    "videos.removeBody": "“{name}” leaves the batch. Videos already rendered from it stay in outputs/.",

    "upload.waiting": "Waiting…",
    "upload.progress": "Uploading {percent} %",
    "upload.hashing": "Checking…",
    "upload.done": "Uploaded",
    "upload.duplicate": "Duplicate: this content is already in the batch",
    "upload.duplicateOf": "Duplicate of “{name}”: it will not be rendered twice",
    "upload.failed": "Upload failed: {message}",
    "upload.tooLarge": "Too large for this server",

    "settings.title": "Settings",
    "settings.engine": "Engine",
    "settings.denoise": "Denoise strength",
    "settings.denoiseHelp": "0 keeps the audio as it is; 1 is the strongest noise reduction.",
    "settings.tempo": "Tempo",
    "settings.tempoHelp": "Speech speed, without changing the pitch.",
    "settings.params": "Engine parameters",
    "settings.paramsEmpty": "No parameters: the engine's defaults apply.",
    "settings.paramKey": "Parameter name",
    "settings.paramValue": "Value",
    "settings.addParam": "Add parameter",
    "settings.removeParam": "Remove parameter",
    "settings.fingerprint": "Settings fingerprint",
    "settings.fingerprintHelp": "Outputs made with a different fingerprint are marked “other settings”.",
    "settings.locked": "Settings are locked while a batch runs. Pause or stop to change them.",
    "settings.saved": "Saved",
    "settings.saving": "Saving…",
    "settings.other": "{count} finished videos were made with other settings. They are kept; re-render them to apply the current settings.",
    "settings.other.one": "1 finished video was made with other settings. It is kept; re-render it to apply the current settings.",
    "settings.otherAction": "Re-render them",

    "batch.title": "Batch",
    "batch.start": "Start",
    "batch.resume": "Resume",
    "batch.pause": "Pause",
    "batch.pauseTitle": "Finish the current item, then stop",
    "batch.pausing": "Pausing…",
    "batch.stop": "Stop",
    "batch.stopTitle": "Stop the current item now; it goes back to the queue",
    "batch.retryFailed": "Retry failed",
    "batch.rerender": "Re-render other settings",
    "batch.rerenderTitle": "Render again the items made with other settings",
    "batch.clear": "Clear history",
    "batch.clearTitle": "Clear history?",
    "batch.clearBody": "Talkie will forget which items are finished, so the next start renders every item again. The output videos are kept: nothing in outputs/ is deleted.",
    "batch.clearConfirm": "Clear history",
    "batch.cleared": "History cleared: {count} items forgotten. Output videos are kept.",
    "batch.cleared.one": "History cleared: 1 item forgotten. Output videos are kept.",
    "batch.overall": "Overall progress",
    "batch.progressText": "{done} of {total} processed",
    "batch.eta": "about {eta} left",
    "batch.etaUnknown": "estimating time left…",
    "batch.idle": "Idle",
    "batch.running": "Rendering",
    "batch.pausingState": "Pausing after the current item",
    "batch.empty": "Add a narration and at least one template to build the batch.",
    "batch.needAudio": "Add a narration to build the batch.",
    "batch.needVideos": "Add at least one template to build the batch.",
    "batch.summary": "{succeeded} succeeded · {failed} failed · {pending} to go",

    "table.caption": "Items of this batch",
    "table.name": "Template",
    "table.status": "Status",
    "table.progress": "Progress",
    "table.attempts": "Attempts",
    "table.duration": "Render time",
    "table.score": "Lip-sync",
    "table.error": "Message",
    "table.actions": "Actions",
    "table.skip": "Skip",
    "table.skipTitle": "Set this item aside; the queue goes on",
    "table.otherSettings": "other settings",
    "table.frames": "frame {frame} / {frames}",
    "table.percent": "{stage} {percent} %",
    "table.device": "on {device}",
    "table.willRetry": "will retry",

    "status.pending": "Pending",
    "status.running": "Rendering",
    "status.success": "Done",
    "status.failed": "Failed",

    "results.title": "Results",
    "results.none": "Finished videos appear here.",
    "results.download": "Download",
    "results.downloadAll": "Download all (zip)",
    "results.score": "lip-sync {score}",

    "log.title": "Run log",
    "log.pause": "Pause scroll",
    "log.resume": "Resume scroll",
    "log.empty": "Nothing has happened yet.",
    "log.batch_started": "Batch started: {to_render} of {total} items to render",
    "log.item_queued": "Queued {name}",
    "log.item_started": "Rendering {name} (attempt {attempt})",
    "log.item_progress": "{name}: frame {frame} / {frames}",
    "log.item_progress.percent": "{name}: {stage} {frame} %",
    "log.item_started.device": " on {device}",
    "log.item_succeeded": "Finished {name} in {seconds} s{score}",
    "log.item_succeeded.score": ", lip-sync {score}",
    "log.item_failed": "Failed {name}: {message}",
    "log.item_failed.retry": " (will retry)",
    "log.item_stopped": "Stopped {name}; it is back in the queue",
    "log.warning": "Warning: {message}",
    "log.batch_finished": "Batch finished: {succeeded} succeeded, {failed} failed, {pending} pending",
    "log.batch_finished.interrupted": "Batch paused: {succeeded} succeeded, {failed} failed, {pending} still pending",

    "error.kind.input": "input",
    "error.kind.transient": "transient",
    "error.generic": "The server refused: {message}",
    "error.network": "The server could not be reached.",
  };

  const zh = {
    "app.title": "Talkie 工作台",
    "app.tagline": "批量口型同步：一段配音，驱动多个模板视频",
    "lang.switch": "English",
    "lang.switchLabel": "Switch to English",
    "backup.button": "下载 task_status.json 备份",
    "backup.short": "备份",
    "backup.none": "还没有 task_status.json，请先生成一批。",
    "backup.reminder": "本批已结束：成功 {succeeded} 条，失败 {failed} 条，待生成 {pending} 条。建议现在下载一份 task_status.json 妥善保存——换机器或误删文件后，凭它就能接着上次的进度继续生成。",
    "backup.reminderAction": "下载备份",
    "common.dismiss": "关闭",
    "common.cancel": "取消",
    "common.remove": "移除",

    "conn.connecting": "正在连接…",
    "conn.live": "已连接",
    "conn.reconnecting": "正在重连…",
    "conn.reconnectingIn": "{seconds} 秒后重连…",
    "conn.lost": "与工作台的连接已断开。恢复之前，页面上的进度可能不是最新的；服务器上的任务不受影响。",
    "conn.retryNow": "立即重连",
    "conn.unauthorized": "访问本工作台需要令牌。请打开 “talkie serve” 启动时打印的链接（末尾带有 ?token=…）。",
    "conn.unreachable": "无法连接到工作台服务器，请确认 “talkie serve” 仍在运行。",

    "audio.title": "配音音频",
    "audio.help": "一段音频驱动所有模板视频。",
    "audio.drop": "将音频文件拖到这里，或<u>点击选择</u>",
    "audio.formats": "支持 WAV、MP3、M4A、FLAC 等格式",
    "audio.none": "尚未上传配音。",
    "audio.replaceHint": "再次上传会替换本批次的配音。",

    "videos.title": "模板视频",
    "videos.help": "每个模板视频生成一条口型同步的成片。",
    "videos.drop": "将模板视频拖到这里，或<u>点击选择</u>",
    "videos.formats": "支持 MP4、MOV、WebM 等格式，可一次选择多个",
    "videos.none": "尚未上传模板视频。",
    "videos.count": "共 {count} 个模板",
    "videos.alsoAs": "相同内容的其他文件名：{names}",
    "videos.remove": "移除模板",
    "videos.removeTitle": "从本批次移除这个模板？",
    "videos.removeBody": "“{name}” 将移出本批次。用它生成过的视频仍保留在 outputs/ 中。",

    "upload.waiting": "排队中…",
    "upload.progress": "上传中 {percent}%",
    "upload.hashing": "校验中…",
    "upload.done": "上传完成",
    "upload.duplicate": "重复文件：相同内容已在本批次中",
    "upload.duplicateOf": "与 “{name}” 内容相同，不会重复生成",
    "upload.failed": "上传失败：{message}",
    "upload.tooLarge": "文件超出服务器的大小上限",

    "settings.title": "生成设置",
    "settings.engine": "生成引擎",
    "settings.denoise": "降噪强度",
    "settings.denoiseHelp": "0 为保留原声，1 为最强降噪。",
    "settings.tempo": "语速",
    "settings.tempoHelp": "调整语速，音调保持不变。",
    "settings.params": "引擎参数",
    "settings.paramsEmpty": "未设置参数，使用引擎默认值。",
    "settings.paramKey": "参数名",
    "settings.paramValue": "取值",
    "settings.addParam": "添加参数",
    "settings.removeParam": "删除参数",
    "settings.fingerprint": "设置指纹",
    "settings.fingerprintHelp": "指纹不同的成片会标记为“旧设置”。",
    "settings.locked": "生成过程中无法修改设置，请先暂停或停止。",
    "settings.saved": "已保存",
    "settings.saving": "保存中…",
    "settings.other": "有 {count} 条成片是用旧设置生成的。它们会保留；如需按当前设置生成，请重新生成。",
    "settings.otherAction": "按当前设置重新生成",

    "batch.title": "批量任务",
    "batch.start": "开始生成",
    "batch.resume": "继续生成",
    "batch.pause": "暂停",
    "batch.pauseTitle": "当前这条生成完后暂停",
    "batch.pausing": "正在暂停…",
    "batch.stop": "停止",
    "batch.stopTitle": "立即中止当前这条，它会重新排队",
    "batch.retryFailed": "重试失败项",
    "batch.rerender": "重新生成旧设置项",
    "batch.rerenderTitle": "按当前设置重新生成用旧设置做的成片",
    "batch.clear": "清除记录",
    "batch.clearTitle": "清除生成记录？",
    "batch.clearBody": "Talkie 将不再记得哪些条目已经完成，下次开始时会重新生成全部条目。已生成的视频会保留，outputs/ 中的文件不会被删除。",
    "batch.clearConfirm": "清除记录",
    "batch.cleared": "已清除 {count} 条记录，成片视频均已保留。",
    "batch.overall": "总进度",
    "batch.progressText": "已完成 {done} / {total}",
    "batch.eta": "预计还需 {eta}",
    "batch.etaUnknown": "正在估算剩余时间…",
    "batch.idle": "空闲",
    "batch.running": "生成中",
    "batch.pausingState": "当前这条完成后暂停",
    "batch.empty": "上传一段配音和至少一个模板视频，即可组成批次。",
    "batch.needAudio": "再上传一段配音，即可组成批次。",
    "batch.needVideos": "再上传至少一个模板视频，即可组成批次。",
    "batch.summary": "成功 {succeeded} · 失败 {failed} · 剩余 {pending}",

    "table.caption": "本批次的条目",
    "table.name": "模板",
    "table.status": "状态",
    "table.progress": "进度",
    "table.attempts": "尝试次数",
    "table.duration": "生成用时",
    "table.score": "口型同步分",
    "table.error": "说明",
    "table.actions": "操作",
    "table.skip": "跳过",
    "table.skipTitle": "跳过这一条，队列继续往下走",
    "table.otherSettings": "旧设置",
    "table.frames": "第 {frame} / {frames} 帧",
    "table.percent": "{stage} {percent}%",
    "table.device": "在 {device} 上",
    "table.willRetry": "将自动重试",

    "status.pending": "等待中",
    "status.running": "生成中",
    "status.success": "已完成",
    "status.failed": "失败",

    "results.title": "成片",
    "results.none": "生成完成的视频会显示在这里。",
    "results.download": "下载",
    "results.downloadAll": "全部打包下载（zip）",
    "results.score": "口型同步分 {score}",

    "log.title": "运行日志",
    "log.pause": "暂停滚动",
    "log.resume": "恢复滚动",
    "log.empty": "暂无日志。",
    "log.batch_started": "开始生成：共 {total} 条，本次需生成 {to_render} 条",
    "log.item_queued": "{name} 已加入队列",
    "log.item_started": "正在生成 {name}（第 {attempt} 次）",
    "log.item_progress": "{name}：第 {frame} / {frames} 帧",
    "log.item_progress.percent": "{name}：{stage} {frame}%",
    "log.item_started.device": "，在 {device} 上",
    "log.item_succeeded": "{name} 生成完成，用时 {seconds} 秒{score}",
    "log.item_succeeded.score": "，口型同步分 {score}",
    "log.item_failed": "{name} 生成失败：{message}",
    "log.item_failed.retry": "（稍后自动重试）",
    "log.item_stopped": "{name} 已中止，重新排队",
    "log.warning": "注意：{message}",
    "log.batch_finished": "本批结束：成功 {succeeded} 条，失败 {failed} 条，待生成 {pending} 条",
    "log.batch_finished.interrupted": "本批已暂停：成功 {succeeded} 条，失败 {failed} 条，还有 {pending} 条待生成",

    "error.kind.input": "素材问题",
    "error.kind.transient": "临时故障",
    "error.generic": "服务器拒绝了请求：{message}",
    "error.network": "无法连接到服务器。",
  };

  const dictionaries = { en, zh };
  const STORAGE_KEY = "talkie.lang";

  function initialLanguage() {
    try {
      const saved = localStorage.getItem(STORAGE_KEY);
      if (saved && dictionaries[saved]) return saved;
    } catch (_) { /* storage may be disabled */ }
    const wanted = (navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"]);
    for (const tag of wanted) {
      const lower = String(tag).toLowerCase();
      if (lower.startsWith("zh")) return "zh";
      if (lower.startsWith("en")) return "en";
    }
    return "en";
  }

  let lang = initialLanguage();
  const listeners = [];

  function t(key, params) {
    // English needs a singular: "key.one" is used when params.count is 1 and it exists.
    if (params && params.count === 1 && (dictionaries[lang][key + ".one"] !== undefined)) key = key + ".one";
    let text = dictionaries[lang][key];
    if (text === undefined) text = en[key];
    if (text === undefined) return key;
    if (params) {
      text = text.replace(/\{(\w+)\}/g, (match, name) => (params[name] === undefined || params[name] === null ? "" : String(params[name])));
    }
    return text;
  }

  // Keys whose text holds markup (<u>); everything else is set as plain text.
  const HTML_KEYS = new Set(["audio.drop", "videos.drop"]);

  function apply(root) {
    const scope = root || document;
    scope.querySelectorAll("[data-i18n]").forEach((element) => {
      const key = element.getAttribute("data-i18n");
      let params;
      const raw = element.getAttribute("data-i18n-params");
      if (raw) { try { params = JSON.parse(raw); } catch (_) { params = undefined; } }
      if (HTML_KEYS.has(key)) element.innerHTML = t(key, params);
      else element.textContent = t(key, params);
    });
    scope.querySelectorAll("[data-i18n-attr]").forEach((element) => {
      for (const pair of element.getAttribute("data-i18n-attr").split(";")) {
        const [attribute, key] = pair.split(":").map((part) => part.trim());
        if (attribute && key) element.setAttribute(attribute, t(key));
      }
    });
  }

  function setLanguage(next) {
    if (!dictionaries[next]) return;
    lang = next;
    try { localStorage.setItem(STORAGE_KEY, next); } catch (_) { /* ignore */ }
    document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
    document.title = t("app.title");
    apply(document);
    listeners.forEach((listener) => listener(next));
  }

  window.I18N = {
    t,
    apply,
    setLanguage,
    get language() { return lang; },
    toggle() { setLanguage(lang === "zh" ? "en" : "zh"); },
    onChange(listener) { listeners.push(listener); },
    init() { setLanguage(lang); },
  };
})();
