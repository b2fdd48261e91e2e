// ORT Turbo: the "Apply Turbo preset" button fills the page's own controls, so the user sees what will run.
// Euler a + SGM Uniform, CFG scale 1, 1-4 steps. Never Align Your Steps or DDIM (broken at 1 step).
function ortTurboSetValue(elemId, value) {
    const root = gradioApp().getElementById(elemId);
    if (!root) return false;
    const input = root.querySelector("input[type=number]") || root.querySelector("input") || root.querySelector("textarea");
    if (!input) return false;
    input.value = value;
    updateInput(input);
    const range = root.querySelector("input[type=range]");
    if (range && range !== input) {
        range.value = value;
        updateInput(range);
    }
    return true;
}

function ortTurboSetDropdown(elemId, value) {
    const root = gradioApp().getElementById(elemId);
    const input = root && root.querySelector("input");
    if (!input) return false;
    input.value = value;
    updateInput(input);
    return true;
}

function ortTurboApplyPreset(tab, steps) {
    const n = parseInt(steps, 10);
    const clamped = Math.min(4, Math.max(1, isNaN(n) ? 1 : n));
    ortTurboSetValue(tab + "_steps", clamped);
    ortTurboSetValue(tab + "_cfg_scale", 1);
    ortTurboSetDropdown(tab + "_sampling", "Euler a");
    ortTurboSetDropdown(tab + "_scheduler", "SGM Uniform");
    return [];
}
