// ORT Turbo's JavaScript only adds tooltips to the WebUI's `titles` (node's test runner; the behaviour
// in a page is tested in a real browser: tests/browser).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

const source = readFileSync(new URL("../../javascript/ort_turbo.js", import.meta.url), "utf8");

test("tooltips for the accordion's and the tab's controls join the WebUI's titles", () => {
    const context = { titles: { "Sampling steps": "the WebUI's own" } };
    vm.runInNewContext(source, context);
    assert.match(context.titles["Apply Turbo preset"], /Euler a.*SGM Uniform.*CFG Scale 1/);
    for (const label of ["Turbo steps", "CFG-free at CFG scale 1", "Export loaded checkpoint", "Export VAE"]) {
        assert.ok(context.titles[label], label);
    }
    assert.equal(context.titles["Sampling steps"], "the WebUI's own");
});

test("a page without the WebUI's hints is left alone", () => {
    assert.doesNotThrow(() => vm.runInNewContext(source, {}));
});
