// The Turbo preset button fills the page's own controls (node's test runner; no browser needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

function fakePage(ids) {
    const updated = [];
    const inputs = {};
    const elements = {};
    for (const id of ids) {
        const number = { type: "number", value: "" };
        const range = { type: "range", value: "" };
        inputs[id] = { number, range };
        elements[id] = {
            querySelector(sel) {
                if (sel === "input[type=number]") return id.endsWith("_sampling") || id.endsWith("_scheduler") ? null : number;
                if (sel === "input[type=range]") return id.endsWith("_sampling") || id.endsWith("_scheduler") ? null : range;
                if (sel === "input") return number;
                return null;
            },
        };
    }
    const context = {
        gradioApp: () => ({ getElementById: (id) => elements[id] || null }),
        updateInput: (el) => updated.push(el),
        Math, parseInt, isNaN,
    };
    vm.createContext(context);
    vm.runInContext(readFileSync(new URL("../../javascript/ort_turbo.js", import.meta.url), "utf8"), context);
    return { context, inputs, updated };
}

const IDS = ["txt2img_steps", "txt2img_cfg_scale", "txt2img_sampling", "txt2img_scheduler"];

test("preset sets steps, CFG 1, Euler a and SGM Uniform", () => {
    const { context, inputs, updated } = fakePage(IDS);
    context.ortTurboApplyPreset("txt2img", "2");
    assert.equal(inputs.txt2img_steps.number.value, 2);
    assert.equal(inputs.txt2img_steps.range.value, 2);
    assert.equal(inputs.txt2img_cfg_scale.number.value, 1);
    assert.equal(inputs.txt2img_sampling.number.value, "Euler a");
    assert.equal(inputs.txt2img_scheduler.number.value, "SGM Uniform");
    assert.ok(updated.length >= 6);
});

test("steps are clamped to 1-4 and never produce Align Your Steps or DDIM", () => {
    const { context, inputs } = fakePage(IDS);
    context.ortTurboApplyPreset("txt2img", "9");
    assert.equal(inputs.txt2img_steps.number.value, 4);
    context.ortTurboApplyPreset("txt2img", "x");
    assert.equal(inputs.txt2img_steps.number.value, 1);
    assert.notEqual(inputs.txt2img_scheduler.number.value, "Align Your Steps");
});

test("a page without the controls is left alone", () => {
    const { context } = fakePage([]);
    assert.equal(JSON.stringify(context.ortTurboApplyPreset("img2img", "1")), "[]");
});
