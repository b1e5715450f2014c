// "New group": a title; we become its admin, then invite members from the group.

import { html, useState } from '../vendor/preact-htm.js';
import { Dialog } from '../components/dialog.js';
import { ActionForm, Field } from '../components/form.js';
import { go } from '../components/hooks.js';
import { closeDialog, createGroup } from '../state.js';

export function NewGroup() {
  const [title, setTitle] = useState('');
  const create = async () => {
    const g = await createGroup(title);
    closeDialog();
    go(`#/group/${g.group_id}`);
  };
  return html`<${Dialog} title="New group" onClose=${closeDialog}>
    <${ActionForm}
      onSubmit=${create}
      submit="Create"
      secondary=${html`<button type="button" class="btn ghost" onClick=${closeDialog}>Cancel</button>`}
    >
      <${Field}
        label="Group name"
        value=${title}
        onInput=${setTitle}
        required
        autofocus
        maxlength="64"
        hint="1 to 64 characters. You can invite people once the group exists."
      />
    <//>
  <//>`;
}
